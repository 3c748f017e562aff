"""A step that fails after the domain was stopped: reported as failed (exit 1), nothing lost,
and the safety snapshot brings the pre-revert state back.  Automatic rollback comes with the
crash-safety work; this pins down what is reported until then."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import libvirt
import pytest

from tests.integration.conftest import HOST, worker_env
from tests.integration.guests import assert_nothing_lost, hash_files
from workers import qcow2

pytestmark = pytest.mark.integration


def test_failure_in_restore_is_reported_and_nothing_is_lost(guests, config, revert):
    g = guests.create()
    g.snapshot("s1", memory=False)
    # A target whose definition libvirt will refuse to define: validation cannot know, restore fails.
    root = ET.fromstring(g.snapshot_xml("s1"))
    root.find("domain/devices/emulator").text = "/usr/bin/no-such-qemu"
    g.dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    g.freeze()
    pre_top = g.top()
    before = hash_files(g.images)

    done = subprocess.run([sys.executable, "-m", "tasks.cli", "revert", g.name, "s1", "--host", HOST, "--json"],
                          env=worker_env(config), capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "failed"
    assert record["error"]["code"] == "libvirt-error" and "no-such-qemu" in record["error"]["message"]
    statuses = {s["name"]: s["status"] for s in record["steps"]}
    assert statuses["restore"] == "failed" and statuses["resume"] == "pending"
    assert record["end_state"] == "shutoff"
    assert_nothing_lost(before, g.images)
    # the pre-revert state is one revert away
    back = revert(g.name, record["safety_snapshot"])
    assert back["state"] == "succeeded", back["error"]
    assert qcow2.read_header(g.refresh().top()).backing_file == pre_top
