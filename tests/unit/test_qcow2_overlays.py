"""qcow2 header parsing and exclusive overlay creation, against real qemu-img images."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from tasks.errors import ErrorCode, StepFailure
from workers import overlays, qcow2
from workers.plan import DiskPlan


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_backing_chain(tmp_path):
    base, mid, top = tmp_path / "base.raw", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-f", "raw", str(base), "1M")
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(base), str(mid))
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", "mid.qcow2", str(top))  # relative backing
    chain = qcow2.backing_chain(str(top))
    assert [h.path for h in chain] == [str(top), str(mid), str(base)]
    assert [h.format for h in chain] == ["qcow2", "qcow2", "raw"]
    assert chain[0].backing_format == "qcow2" and chain[1].backing_format == "raw"
    assert chain[0].virtual_size == 1024 * 1024


def test_create_overlay_is_exclusive_and_explicit(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "1M")
    disk = DiskPlan("vda", str(base), "qcow2", str(tmp_path / "new.qcow2"))
    overlays.create_overlay(disk)
    header = qcow2.read_header(disk.overlay)
    assert (header.backing_file, header.backing_format) == (str(base), "qcow2")

    before = hashlib.sha256(open(disk.overlay, "rb").read()).hexdigest()
    with pytest.raises(StepFailure) as caught:
        overlays.create_overlay(disk)
    assert caught.value.code is ErrorCode.OVERLAY_EXISTS
    assert hashlib.sha256(open(disk.overlay, "rb").read()).hexdigest() == before


def test_failed_qemu_img_leaves_nothing(tmp_path):
    disk = DiskPlan("vda", str(tmp_path / "absent.qcow2"), "qcow2", str(tmp_path / "new.qcow2"))
    with pytest.raises(StepFailure) as caught:
        overlays.create_overlay(disk)
    assert caught.value.code is ErrorCode.QEMU_IMG_FAILED
    assert not (tmp_path / "new.qcow2").exists()
