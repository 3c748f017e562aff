"""A step that fails after the domain was stopped: the revert is rolled back to the pre-revert
state (definition, files, current snapshot, memory when saved), reported as failed (exit 1), and
the domain can be reverted again."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import libvirt
import pytest

from tests.integration.conftest import HOST, worker_env
from tests.integration.guests import Unchanged

pytestmark = pytest.mark.integration


def broken_target(g, name: str, *, memory: bool) -> None:
    """A snapshot whose definition libvirt refuses to define: validation cannot know, restore fails."""
    g.snapshot(name, memory=memory)
    root = ET.fromstring(g.snapshot_xml(name))
    root.find("domain/devices/emulator").text = "/usr/bin/no-such-qemu"
    g.dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)


def test_failure_in_restore_rolls_back_and_exits_1(guests, config, revert):
    g = guests.create()
    broken_target(g, "s1", memory=False)
    g.freeze()
    unchanged = Unchanged(g)

    done = subprocess.run([sys.executable, "-m", "tasks.cli", "revert", g.name, "s1", "--host", HOST, "--json"],
                          env=worker_env(config), capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "failed"
    assert record["error"]["code"] == "libvirt-error" and "no-such-qemu" in record["error"]["message"]
    statuses = {s["name"]: s["status"] for s in record["steps"]}
    assert statuses["restore"] == "failed" and statuses["resume"] == "pending"
    assert record["recovery"]["outcome"] == "rolled-back" and record["recovery"]["by"] == "worker", record["recovery"]
    assert record["created_files"] == [] and record["safety_snapshot"] is None
    # it was paused: without a saved memory image it stays shut off, on its pre-revert files
    assert record["end_state"] == "shutoff"
    unchanged.state = (libvirt.VIR_DOMAIN_SHUTOFF, *unchanged.state[1:])
    unchanged.check()
    # and a later revert of the same domain works
    g.dom.create()
    g.snapshot("s2", memory=True)
    assert revert(g.name, "s2", allow_respawn=True)["state"] == "succeeded"


def test_failure_with_safety_memory_resumes_the_guest_exactly(guests, revert):
    g = guests.create()
    broken_target(g, "s1", memory=True)
    g.wait_ticks(20)
    g.freeze()
    counter = g.counter()
    unchanged = Unchanged(g)

    record = revert(g.name, "s1", allow_respawn=True, safety_memory=True)

    assert record["state"] == "failed" and record["recovery"]["outcome"] == "rolled-back"
    assert "restarted the domain from the safety snapshot's memory" in record["recovery"]["actions"]
    assert record["end_state"] == "paused"
    assert g.refresh().counter() == counter  # the very memory it had: saved while paused
    unchanged.check()
