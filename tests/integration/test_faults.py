"""Fault injection on the real stack: a worker SIGKILLed at every step boundary and mid-restore,
libvirtd and Redis restarted mid-revert, a full disk, a backing file removed after validation,
every step delivered twice.  Each ends with the domain at the target or back at its pre-revert
state, never between; libvirt metadata consistent; every pre-existing file unchanged; the record
saying what happened; and a later revert of the same domain working."""
from __future__ import annotations

import errno
import os
import time

import pytest

from tasks import api
from tasks.model import STEPS
from tests.integration.conftest import FAULTY
from tests.integration.guests import Unchanged, assert_nothing_lost

pytestmark = pytest.mark.integration

# (fault point, how recovery settles it)
KILL_POINTS = [
    ("validate:after", "rolled-back"),
    ("open_memory_image:after", "rolled-back"),
    ("stop:before", "rolled-back"),
    ("stop:after", "rolled-back"),
    ("recreate_overlays:claimed", "rolled-back"),
    ("recreate_overlays:after", "rolled-back"),
    ("restore:mid", "rolled-back"),
    ("restore:after", "rolled-forward"),
    ("resume:after", "rolled-forward"),
    ("emit_events:after", "rolled-forward"),
]


def prepared_guest(guests):
    """A paused guest with a memory snapshot 's1' it has run past: its files hash stably."""
    g = guests.create()
    g.snapshot("s1", memory=True)
    g.wait_ticks(20)
    g.freeze()
    return g


def revert_on_faulty(cluster, g, **flags):
    return api.revert(g.name, "s1", FAULTY, cluster=cluster, allow_respawn=True, **flags)


def later_revert_works(cluster, faulty, g, **settings):
    faulty.start(**settings)  # a worker with no fault armed
    record = revert_on_faulty(cluster, g, end_state="paused").wait(120)
    assert record["state"] == "succeeded", record["error"]


def events_of(cluster, revert_id):
    return [e for e in cluster.store.events(1000) if e["revert_id"] == revert_id]


@pytest.mark.parametrize("point, outcome", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_worker_killed(point, outcome, guests, faulty, cluster):
    g = prepared_guest(guests)
    counter = g.counter()
    unchanged = Unchanged(g)
    faulty.start(faults=f"{point}=kill")
    handle = revert_on_faulty(cluster, g, safety_memory=True)
    faulty.wait_dead()
    faulty.start()  # a new worker settles the journal before it takes any message

    record = handle.wait(60)

    assert record["recovery"]["by"] == "recovery" and record["recovery"]["outcome"] == outcome, record
    if outcome == "rolled-back":
        assert record["state"] == "failed" and record["error"]["code"] == "worker-lost"
        unchanged.check()  # state, definition, snapshots, current snapshot, files, no new file
        assert g.refresh().counter() == counter  # restarted from the safety snapshot's memory
    else:
        assert record["state"] == "succeeded" and record["end_state"] == "running"
        g.refresh()
        assert g.current_snapshot() == "s1" and g.top() in record["created_files"]
        assert_nothing_lost(unchanged.files, g.images)
        assert len(events_of(cluster, handle.id)) == 5  # stopped, started, resumed, defined, finished
    later_revert_works(cluster, faulty, g)


def test_every_step_delivered_twice(guests, faulty, cluster):
    g = prepared_guest(guests)
    unchanged = Unchanged(g)
    faulty.start(faults=";".join(f"{step}:duplicate=1" for step in STEPS))
    record = revert_on_faulty(cluster, g, end_state="paused").wait(120)
    assert record["state"] == "succeeded", record["error"]
    overlays = [f for f in record["created_files"] if "virt-revert-pre" not in f]
    assert len(overlays) == 1 and g.refresh().top() == overlays[0]
    new_files = {f for f in os.listdir(g.images) if f.startswith(f"{g.name}.")} - {
        os.path.basename(p) for p in unchanged.files}
    assert new_files == {os.path.basename(p) for p in record["created_files"]}
    assert [s.getName() for s in g.dom.listAllSnapshots()].count(record["safety_snapshot"]) == 1
    assert len(events_of(cluster, record["revert_id"])) == 5
    assert_nothing_lost(unchanged.files, g.images)


def test_libvirtd_restarted_mid_restore(guests, faulty, cluster, host):
    g = prepared_guest(guests)
    unchanged = Unchanged(g)
    faulty.start(faults="restore:mid=pause")
    handle = revert_on_faulty(cluster, g, end_state="paused")
    marker = faulty.wait_paused(handle.id, "restore:mid")
    host.restart_libvirtd()  # QEMU processes live on; libvirtd reattaches to them
    guests.reconnect(host.uri, [g])
    marker.unlink()
    record = handle.wait(120)
    assert record["state"] == "succeeded", record["error"]
    assert g.refresh().current_snapshot() == "s1" and g.top() in record["created_files"]
    assert_nothing_lost(unchanged.files, g.images)
    later_revert_works(cluster, faulty, g)


def supervised_wait(faulty, handle, timeout: float = 120) -> dict:
    """Wait for the revert as a supervisor (systemd's Restart=) would: a worker that exits is
    started again, and its recovery settles what it left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = handle.record()
        if record["state"] in ("succeeded", "failed", "refused"):
            return record
        if faulty.proc.proc.poll() is not None:
            faulty.start()
        time.sleep(0.2)
    raise TimeoutError(f"revert {handle.id} not settled")


def test_redis_restarted_mid_revert(guests, faulty, cluster, redis_server):
    g = prepared_guest(guests)
    counter = g.counter()
    unchanged = Unchanged(g)
    faulty.start(faults="stop:before=pause")
    handle = revert_on_faulty(cluster, g, end_state="paused", safety_memory=True)
    marker = faulty.wait_paused(handle.id, "stop:before")
    redis_server.restart()  # persistent (AOF): queues, records and locks survive
    marker.unlink()
    # kombu's Redis transport may end the worker on the lost broker connection ("Unrecoverable
    # error"): then the restarted worker's recovery settles the revert.
    record = supervised_wait(faulty, handle)
    if record["state"] == "succeeded":
        assert g.refresh().current_snapshot() == "s1" and g.top() in record["created_files"]
        assert_nothing_lost(unchanged.files, g.images)
    else:
        assert record["recovery"]["outcome"] == "rolled-back", record
        unchanged.check()
        assert g.refresh().counter() == counter
    later_revert_works(cluster, faulty, g)


def fill(directory) -> str:
    """Write a ballast file until the filesystem is full; return its path."""
    path = os.path.join(directory, "ballast")
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return path


def test_no_space_left_while_creating_overlays(guests, faulty, cluster, small_root):
    g = guests.create(images=small_root)
    g.snapshot("s1", memory=True)
    g.freeze()
    unchanged = Unchanged(g)
    faulty.start(faults="recreate_overlays:before=pause", space_reserve=0)
    handle = revert_on_faulty(cluster, g)
    marker = faulty.wait_paused(handle.id, "recreate_overlays:before")
    ballast = fill(small_root)
    marker.unlink()
    record = handle.wait(120)
    os.unlink(ballast)
    assert record["state"] == "failed" and record["recovery"]["outcome"] == "rolled-back", record
    assert record["error"]["code"] in ("qemu-img-failed", "io-error")
    unchanged.state = (5, *unchanged.state[1:])  # no memory was saved: back, but shut off
    unchanged.check()
    g.dom.create()
    later_revert_works(cluster, faulty, g, space_reserve=0)


def test_backing_file_removed_after_validation(guests, faulty, cluster):
    g = guests.create(start=False)
    g.snapshot("s1", memory=False)
    unchanged = Unchanged(g)
    faulty.start(faults="validate:after=pause")
    handle = api.revert(g.name, "s1", FAULTY, cluster=cluster)
    marker = faulty.wait_paused(handle.id, "validate:after")
    os.rename(g.base, f"{g.base}.away")
    marker.unlink()
    record = handle.wait(120)
    os.rename(f"{g.base}.away", g.base)
    assert record["state"] == "failed" and record["recovery"]["outcome"] == "rolled-back", record
    unchanged.check()
    faulty.start()
    assert api.revert(g.name, "s1", FAULTY, cluster=cluster).wait(120)["state"] == "succeeded"
