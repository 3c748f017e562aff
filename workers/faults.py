"""Fault injection points, for the fault-injection tests only.

`VIRT_REVERT_FAULTS="stop:after=kill;recreate_overlays:before=pause"` arms
checkpoints in a worker process: `kill` sends the worker SIGKILL (a real crash
at a precise point); `pause` writes `<state_dir>/faults/<revert id>.<point>`
and waits until the test removes it (so the test can kill libvirtd, restart
Redis, fill a disk or remove a file at that moment).  Unset, every checkpoint
is a dictionary lookup.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "VIRT_REVERT_FAULTS"


def _armed() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    return dict(item.split("=", 1) for item in spec.split(";") if "=" in item)


ARMED = _armed()
_fired: set[tuple[str, str]] = set()  # each point fires once per revert (a retried step passes on)


def checkpoint(point: str, revert_id: str, state_dir: str) -> None:
    action = ARMED.get(point)
    if action is None or (revert_id, point) in _fired:
        return
    _fired.add((revert_id, point))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause":
        marker = Path(state_dir) / "faults" / f"{revert_id}.{point}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        while marker.exists():
            time.sleep(0.05)


def armed(point: str) -> str | None:
    return ARMED.get(point)
