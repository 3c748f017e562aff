"""Reverts through the whole pipeline on the real stack: memory, disks, metadata, nothing lost."""
from __future__ import annotations

import libvirt
import pytest

from devstack import guest as counter_guest
from tasks.model import STEPS
from tests.integration.guests import assert_nothing_lost, hash_files
from workers import qcow2

pytestmark = pytest.mark.integration


def created_overlay(record) -> str:
    overlays = [f for f in record["created_files"] if "virt-revert-pre" not in f]
    assert len(overlays) == 1, record["created_files"]
    return overlays[0]


def test_memory_revert_restores_memory_and_disk(guests, revert):
    g = guests.create()
    g.wait_disk_counter(g.base, 1)
    before_snap = g.counter()
    overlay, mem = g.snapshot("s1", memory=True)
    after_snap = g.counter()
    # let the guest run on: memory counts on, and the overlay receives newer disk writes
    g.wait_disk_counter(overlay, after_snap + 20)
    g.freeze()
    later = g.counter()
    before = hash_files(g.images)

    record = revert(g.name, "s1", allow_respawn=True, end_state="paused")

    assert record["state"] == "succeeded", record["error"]
    assert record["end_state"] == "paused" and record["error"] is None
    assert [s["name"] for s in record["steps"]] == list(STEPS)
    statuses = {s["name"]: s["status"] for s in record["steps"]}
    assert statuses == {**dict.fromkeys(STEPS, "succeeded"), "resume": "skipped"}  # restored paused already
    g.refresh()
    assert g.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    # memory: back at snapshot time, not at the later value
    assert before_snap <= g.counter() <= after_snap + 1 < later
    # disks: a new top on the snapshot-time file; post-snapshot writes only in the kept old overlay
    top = created_overlay(record)
    assert g.top() == top and top not in before
    assert qcow2.read_header(top).backing_file == str(g.base)
    assert g.disk_counter(top) <= after_snap
    assert g.disk_counter(overlay) >= after_snap + 20
    # metadata: target current, safety snapshot present
    assert g.current_snapshot() == "s1"
    assert record["safety_snapshot"] == f"virt-revert-pre-{record['revert_id']}"
    g.dom.snapshotLookupByName(record["safety_snapshot"])
    assert_nothing_lost(before, g.images)


def test_running_revert_resumes_and_emits_events_in_libvirt_order(guests, revert, cluster):
    g = guests.create()
    at_snap = g.counter()
    overlay, _ = g.snapshot("s1", memory=True)
    g.wait_ticks(40)
    # The guest keeps writing its live top until the revert stops it: hash everything else exactly,
    # and check the live top still holds what was written after the snapshot.
    before = hash_files(g.images, exclude={str(overlay)})

    record = revert(g.name, "s1", allow_respawn=True)

    assert record["state"] == "succeeded" and record["end_state"] == "running"
    g.refresh()
    assert g.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert at_snap <= g.counter() < at_snap + 30  # restored, then running on
    g.wait_ticks(3)  # the vCPUs really run
    assert g.disk_counter(overlay) > at_snap
    assert_nothing_lost(before, g.images)
    events = [e for e in cluster.store.events(50) if e["revert_id"] == record["revert_id"]]
    assert [(e.get("event"), e.get("detail")) for e in events] == [
        ("stopped", "from-snapshot"), ("started", "from-snapshot"), ("resumed", "from-snapshot"),
        ("defined", "from-snapshot"), (None, None)]
    assert events[-1]["type"] == "revert-finished" and events[-1]["state"] == "succeeded"


def test_disk_only_snapshot_reverts_to_shut_off_on_snapshot_time_disk(guests, revert):
    g = guests.create()
    g.wait_disk_counter(g.base, 1)
    overlay, _ = g.snapshot("d1", memory=False)
    at_snap = g.counter()
    g.wait_disk_counter(overlay, at_snap + 20)
    g.freeze()
    before = hash_files(g.images)

    record = revert(g.name, "d1")

    assert record["state"] == "succeeded" and record["end_state"] == "shutoff"
    assert [s["status"] for s in record["steps"]][1] == "skipped"  # no memory image to open
    g.refresh()
    assert not g.dom.isActive()
    top = created_overlay(record)
    assert g.top() == top
    assert qcow2.read_header(top).backing_file == str(g.base)
    assert g.disk_counter(top) <= at_snap < at_snap + 20 <= g.disk_counter(overlay)
    assert_nothing_lost(before, g.images)


def test_cold_boot_runs_a_disk_only_target(guests, revert):
    g = guests.create()
    g.snapshot("d1", memory=False)
    g.wait_ticks(40)
    g.freeze()
    record = revert(g.name, "d1", end_state="running", cold_boot=True)
    assert record["state"] == "succeeded" and record["end_state"] == "running"
    g.refresh()
    assert g.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert counter_guest.wait_for_counter(g.dom, 1) < 40  # a fresh boot counts from zero


def test_offline_snapshot_of_shut_off_domain(guests, revert):
    g = guests.create(start=False)
    overlay, _ = g.snapshot("o1", memory=False)
    g.dom.create()
    g.wait_disk_counter(overlay, 20)  # the guest writes into the offline snapshot's overlay
    g.dom.destroy()
    before = hash_files(g.images)

    record = revert(g.name, "o1")

    assert record["state"] == "succeeded" and record["end_state"] == "shutoff"
    assert [e for e in record["steps"] if e["name"] == "stop"][0]["detail"] == {"safety_snapshot_taken": True}
    g.refresh()
    top = created_overlay(record)
    assert g.top() == top and g.disk_counter(top) is None  # the base was never written while shut off
    assert g.disk_counter(overlay) >= 20
    assert g.current_snapshot() == "o1"
    assert_nothing_lost(before, g.images)


@pytest.mark.parametrize("flag, state", [("stopped", libvirt.VIR_DOMAIN_SHUTOFF),
                                         ("running", libvirt.VIR_DOMAIN_RUNNING)])
def test_end_state_flags_override_the_snapshot_state(guests, revert, flag, state):
    g = guests.create()
    g.freeze()
    g.snapshot("p1", memory=True)  # a paused snapshot: default end state would be paused
    g.dom.resume()
    record = revert(g.name, "p1", allow_respawn=True, end_state=flag)
    assert record["state"] == "succeeded"
    assert record["end_state"] == {"stopped": "shutoff", "running": "running"}[flag]
    assert g.refresh().dom.state()[0] == state


def test_parent_then_child_then_twice_the_same(guests, revert):
    g = guests.create()
    at_s1 = g.counter()
    g.snapshot("s1", memory=True)
    g.wait_ticks(40)
    at_s2 = g.counter()
    g.snapshot("s2", memory=True)  # child of s1
    g.wait_ticks(20)

    first = revert(g.name, "s1", allow_respawn=True, end_state="paused")
    assert first["state"] == "succeeded" and at_s1 <= g.refresh().counter() < at_s2

    child = revert(g.name, "s2", allow_respawn=True, end_state="paused")
    assert child["state"] == "succeeded" and at_s2 <= g.refresh().counter() <= at_s2 + 5
    assert g.current_snapshot() == "s2"

    g.freeze()
    before = hash_files(g.images)
    again = [revert(g.name, "s1", allow_respawn=True, end_state="paused") for _ in range(2)]
    assert [r["state"] for r in again] == ["succeeded", "succeeded"]
    assert created_overlay(again[0]) != created_overlay(again[1])
    assert at_s1 <= g.refresh().counter() < at_s2
    assert_nothing_lost(before, g.images)


def test_safety_snapshot_reverts_back_to_the_pre_revert_state(guests, revert):
    g = guests.create()
    g.snapshot("s1", memory=True)
    g.wait_ticks(40)
    g.freeze()
    pre_revert = g.counter()
    pre_top = g.top()
    pre_disk = g.disk_counter(pre_top)

    record = revert(g.name, "s1", allow_respawn=True, safety_memory=True, end_state="paused")
    assert record["state"] == "succeeded"
    assert g.refresh().counter() < pre_revert

    back = revert(g.name, record["safety_snapshot"], allow_respawn=True, end_state="paused")
    assert back["state"] == "succeeded", back["error"]
    assert g.refresh().counter() == pre_revert  # memory saved while paused: exact
    assert qcow2.read_header(g.top()).backing_file == pre_top
    assert g.disk_counter(g.top()) == pre_disk


def test_internal_snapshot_goes_through_libvirts_revert(guests, revert):
    g = guests.create()
    at_snap = g.counter()
    g.dom.snapshotCreateXML("<domainsnapshot><name>i1</name></domainsnapshot>", 0)  # internal, with memory
    g.wait_ticks(40)
    record = revert(g.name, "i1", allow_respawn=True, end_state="paused")
    assert record["state"] == "succeeded", record["error"]
    assert record["created_files"] == []
    assert at_snap <= g.refresh().counter() < at_snap + 20
    assert g.current_snapshot() == "i1"
    g.dom.snapshotLookupByName(record["safety_snapshot"])  # the pre-revert state, inside the image


def test_transient_domain_stays_defined_with_its_snapshots(guests, revert):
    g = guests.create(transient=True)
    at_snap = g.counter()
    g.snapshot("s1", memory=True)
    g.wait_ticks(40)
    record = revert(g.name, "s1", allow_respawn=True)
    assert record["state"] == "succeeded", record["error"]
    g.refresh()
    assert g.dom.isActive() and not g.dom.isPersistent()
    assert at_snap <= g.counter() < at_snap + 30
    assert {s.getName() for s in g.dom.listAllSnapshots()} == {"s1", record["safety_snapshot"]}
    assert g.current_snapshot() == "s1"


def test_without_safety_snapshot_only_the_new_overlay_is_created(guests, revert):
    g = guests.create()
    g.snapshot("s1", memory=True)
    g.freeze()
    snapshots_before = {s.getName() for s in g.dom.listAllSnapshots()}
    before = hash_files(g.images)
    record = revert(g.name, "s1", allow_respawn=True, end_state="paused", safety_snapshot=False)
    assert record["state"] == "succeeded"
    assert record["safety_snapshot"] is None
    assert set(hash_files(g.images)) - set(before) == {created_overlay(record)} == set(record["created_files"])
    assert {s.getName() for s in g.refresh().dom.listAllSnapshots()} == snapshots_before
    assert_nothing_lost(before, g.images)
