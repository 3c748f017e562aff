"""Every refusal the real stack can be driven into: a stable code, a sentence naming the domain,
snapshot and file, and nothing changed (files by hash, libvirt state and snapshot metadata).

Three refusals cannot be produced through libvirt 9.0's API and are covered by the plan's unit
table only: a snapshot without <domain> (9.0 refuses to redefine one: "missing domain in
snapshot"), a mixed internal/external snapshot (refused at creation), and an unreadable memory
image (the worker runs as root).
"""
from __future__ import annotations

import os
import threading
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from devstack.workers import WorkerProcess
from tasks import api, locks
from tests.integration.conftest import HOST, wait_for_host, worker_env
from tests.integration.guests import Unchanged

pytestmark = pytest.mark.integration


def assert_refused(record, code, *names):
    assert record["state"] == "refused", record
    assert record["error"]["code"] == code, record["error"]
    assert record["error"]["hint"]
    for name in names:
        assert str(name) in record["error"]["message"], (name, record["error"]["message"])


def test_unknown_host(cluster, worker):
    record = api.revert("web1", "s1", "no-such-host", cluster=cluster).wait(10)
    assert_refused(record, "host-unknown", "no-such-host")


def test_offline_host(cluster, config, host, stack_dir):
    with WorkerProcess("gone", host.uri, worker_env(config), log_path=stack_dir / "worker-gone.log"):
        wait_for_host(cluster, "gone")
    deadline = time.monotonic() + 30
    while "gone" in cluster.store.live_hosts() and time.monotonic() < deadline:
        time.sleep(0.2)
    record = api.revert("web1", "s1", "gone", cluster=cluster).wait(10)
    assert_refused(record, "host-offline", "gone")


def test_invalid_end_state(cluster, worker):
    record = api.revert("web1", "s1", HOST, end_state="sideways", cluster=cluster).wait(10)
    assert_refused(record, "invalid-request", "sideways")


def test_unknown_domain(revert):
    assert_refused(revert("no-such-domain", "s1"), "domain-not-found", "no-such-domain")


def test_unknown_snapshot(guests, revert):
    g = guests.create()
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "nope"), "snapshot-not-found", g.name, "nope")
    unchanged.check()


def test_memory_snapshot_of_running_domain_needs_allow_respawn(guests, revert):
    g = guests.create()
    g.snapshot("s1", memory=True)
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "s1"), "revert-risky", g.name, "s1")
    unchanged.check()
    # the refusal released the domain's lock: the same revert with the flag goes through
    assert revert(g.name, "s1", allow_respawn=True)["state"] == "succeeded"


@pytest.mark.parametrize("end_state", ["running", "paused"])
def test_no_memory_image_without_cold_boot(guests, revert, end_state):
    g = guests.create()
    g.snapshot("d1", memory=False)
    g.freeze()
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "d1", end_state=end_state), "memory-state-missing", g.name, "d1")
    unchanged.check()


def test_memory_image_missing(guests, revert):
    g = guests.create()
    _, mem = g.snapshot("s1", memory=True)
    g.freeze()
    os.rename(mem, f"{mem}.moved-away")
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "s1", allow_respawn=True), "memory-image-missing", g.name, "s1", mem)
    unchanged.check()


def test_memory_image_not_a_save_image(guests, revert):
    g = guests.create()
    _, mem = g.snapshot("s1", memory=True)
    g.freeze()
    mem.write_bytes(b"not a libvirt save image\n" * 100)
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "s1", allow_respawn=True), "memory-image-invalid", g.name, mem)
    unchanged.check()


def test_memory_image_truncated(guests, revert):
    g = guests.create()
    _, mem = g.snapshot("s1", memory=True)
    g.freeze()
    os.truncate(mem, 64)  # the magic survives; the header and XML do not
    unchanged = Unchanged(g)
    record = revert(g.name, "s1", allow_respawn=True)
    assert_refused(record, "memory-image-invalid", g.name, mem)
    assert [s["status"] for s in record["steps"]][:2] == ["succeeded", "refused"]  # caught opening it
    unchanged.check()


def test_memory_image_of_another_domain(guests, revert):
    g, other = guests.create(), guests.create()
    g.snapshot("s1", memory=True)
    _, other_mem = other.snapshot("s1", memory=True)
    root = ET.fromstring(g.snapshot_xml("s1"))
    root.find("memory").set("file", str(other_mem))
    g.dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    g.freeze()
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "s1", allow_respawn=True), "memory-image-mismatch", g.name, other.name)
    unchanged.check()


def test_backing_file_missing(guests, revert):
    g = guests.create(start=False)
    g.snapshot("o1", memory=False)
    os.rename(g.base, f"{g.base}.moved-away")
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "o1"), "backing-missing", g.name, "o1", g.base)
    unchanged.check()


def test_file_outside_storage_roots(guests, revert, stack_dir):
    g = guests.create(images=stack_dir / "outside")
    g.snapshot("s1", memory=True)
    g.freeze()
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "s1", allow_respawn=True), "file-outside-roots", g.name, stack_dir / "outside")
    unchanged.check()


def test_not_enough_space(guests, revert, small_root):
    g = guests.create(images=small_root)
    g.snapshot("s1", memory=True)
    g.freeze()
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "s1", allow_respawn=True), "insufficient-space", g.name, small_root)
    unchanged.check()


def test_block_job_running(guests, revert):
    g = guests.create()
    g.snapshot("s1", memory=True)
    copy = g.images / f"{g.name}.copy.qcow2"
    g.dom.blockCopy("vda", f"<disk type='file'><source file='{copy}'/><driver type='qcow2'/></disk>",
                    flags=libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB | libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW)
    try:
        g.freeze()
        unchanged = Unchanged(g)
        assert_refused(revert(g.name, "s1", allow_respawn=True), "block-job-running", g.name, "vda")
        unchanged.check()
    finally:
        g.dom.blockJobAbort("vda", 0)


def test_another_revert_in_flight(guests, revert, cluster):
    g = guests.create()
    g.snapshot("s1", memory=True)
    g.freeze()
    unchanged = Unchanged(g)
    uuid = g.dom.UUIDString()
    assert locks.acquire(cluster.store.redis, uuid, "0123456789ab", 60) is None  # another client's revert
    try:
        assert_refused(revert(g.name, "s1", allow_respawn=True), "revert-in-flight", g.name, "0123456789ab")
    finally:
        locks.release(cluster.store.redis, uuid, "0123456789ab")
    unchanged.check()


def test_two_clients_at_the_same_moment_never_overlap(guests, cluster, worker):
    g = guests.create()
    g.snapshot("s1", memory=True)
    barrier = threading.Barrier(2)
    records = [None, None]

    def client(i):
        barrier.wait()
        records[i] = api.revert(g.name, "s1", HOST, allow_respawn=True, cluster=cluster).wait(120)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = sorted(r["state"] for r in records)
    if states == ["refused", "succeeded"]:
        refused = next(r for r in records if r["state"] == "refused")
        winner = next(r for r in records if r["state"] == "succeeded")
        assert_refused(refused, "revert-in-flight", winner["revert_id"])
    else:  # the first finished before the second validated: then they ran one after the other
        assert states == ["succeeded", "succeeded"]
        first, second = sorted(records, key=lambda r: r["steps"][0]["started"])
        assert first["steps"][-1]["finished"] <= second["steps"][0]["finished"]


def test_transient_domain_to_inactive_snapshot(guests, revert):
    g = guests.create(transient=True)
    g.snapshot("d1", memory=False)
    g.freeze()
    unchanged = Unchanged(g)
    assert_refused(revert(g.name, "d1"), "transient-inactive", g.name, "d1")
    unchanged.check()
