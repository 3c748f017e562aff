"""Create the revert's new qcow2 overlays, exclusively.

`qemu-img create` silently overwrites an existing file, so the path is first
claimed with O_CREAT|O_EXCL: if anything is there, nothing is touched.
"""
from __future__ import annotations

import os
import subprocess

from tasks.errors import ErrorCode, StepFailure
from workers.plan import DiskPlan


def claim(path: str) -> None:
    """Create `path` empty, failing if it exists: the file is then ours to fill."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise StepFailure(ErrorCode.OVERLAY_EXISTS,
                          f"overlay path '{path}' already exists; nothing was written to it") from None
    os.close(fd)


def create_overlay(disk: DiskPlan) -> None:
    """Claim `disk.overlay`, then make it a qcow2 on `disk.backing`."""
    claim(disk.overlay)
    fill_overlay(disk)


def fill_overlay(disk: DiskPlan) -> None:
    """Make the claimed, empty `disk.overlay` a qcow2 on `disk.backing`, the backing format explicit (-F)."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk.backing_format, "-b", disk.backing, disk.overlay]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(disk.overlay)  # ours: claimed above
        raise StepFailure(ErrorCode.QEMU_IMG_FAILED,
                          f"qemu-img could not create overlay '{disk.overlay}' on '{disk.backing}': "
                          f"{result.stderr.strip()}")
