"""Batch rollbacks over three real hosts: limits, refusals, a dead worker, cancel, dry-run."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tasks import api
from tests.integration.conftest import env_for, wait_in_inventory
from tests.integration.guests import Unchanged, assert_nothing_lost, hash_files

pytestmark = pytest.mark.integration


def make_fleet(fleet, cluster, per_host: int, tag: str, snapshot: bool = True):
    """`per_host` paused guests named <tag>-<n> on every host, each with a memory snapshot 'golden'."""
    guests = []
    for host, factory in fleet.items():
        for n in range(per_host):
            g = factory.create(name=f"{tag}-{host}-{n}")
            if snapshot:
                g.snapshot("golden", memory=True)
            g.freeze()
            guests.append((host, g))
    for host, g in guests:
        wait_in_inventory(cluster, g.name, host)
    return guests


def batch_cli(config, *args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "tasks.cli", "batch", *args], env=env_for(config),
                          stdin=stdin, capture_output=True, text=True, timeout=600)


def max_in_flight(items) -> int:
    """Most reverts of these items running at one moment, from their records' timestamps."""
    edges = sorted([(i["started"], 1) for i in items if i["started"]] + [(i["finished"], -1) for i in items
                                                                         if i["started"]])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def test_batch_over_three_hosts_with_refusals_and_per_host_limit(fleet, cluster, config):
    tag = f"web{uuid.uuid4().hex[:4]}"
    guests = make_fleet(fleet, cluster, per_host=4, tag=tag)
    bare = fleet["hv-b"].create(name=f"{tag}-bare")  # no 'golden': refused, the others go on
    bare.freeze()
    wait_in_inventory(cluster, bare.name, "hv-b")
    before = {host: hash_files(factory.images) for host, factory in fleet.items()}

    done = batch_cli(config, f"{tag}-*", "--snapshot", "golden", "--max-per-host", "2", "--paused",
                     "--allow-respawn", "--yes", "--json")

    assert done.returncode == 3, done.stdout + done.stderr  # partial: one refused
    record = json.loads(done.stdout)
    states = {i["domain"]: i["state"] for i in record["items"]}
    assert states.pop(bare.name) == "refused"
    assert set(states.values()) == {"succeeded"} and len(states) == 12
    for host in fleet:
        mine = [i for i in record["items"] if i["host"] == host and i["state"] == "succeeded"]
        assert len(mine) == 4 and max_in_flight(mine) <= 2
        assert_nothing_lost(before[host], fleet[host].images)
    assert record["hosts"]["hv-b"] == {"succeeded": 4, "refused": 1}
    for _host, g in guests:
        assert g.refresh().current_snapshot() == "golden"


def test_not_on_a_terminal_without_yes_is_refused(fleet, cluster, config):
    tag = f"ny{uuid.uuid4().hex[:4]}"
    (_, g), = make_fleet({"hv-b": fleet["hv-b"]}, cluster, per_host=1, tag=tag)
    unchanged = Unchanged(g)
    done = batch_cli(config, f"{tag}-*", "--snapshot", "golden", "--allow-respawn")
    assert done.returncode == 2 and "without --yes" in done.stderr
    unchanged.check()


def test_dry_run_changes_nothing(fleet, cluster, config):
    tag = f"db{uuid.uuid4().hex[:4]}"
    guests = make_fleet(fleet, cluster, per_host=1, tag=tag)
    unchanged = [Unchanged(g) for _, g in guests]
    risky = batch_cli(config, f"{tag}-*", "--snapshot", "golden", "--dry-run", "--json")
    assert risky.returncode == 2  # everything would be refused
    assert {r["refusal"]["code"] for r in json.loads(risky.stdout)} == {"revert-risky"}
    done = batch_cli(config, f"{tag}-*", "--snapshot", "golden", "--dry-run", "--json", "--allow-respawn")
    assert done.returncode == 0, done.stderr
    rows = {r["domain"]: r for r in json.loads(done.stdout)}
    assert len(rows) == 3 and all(r["refusal"] is None for r in rows.values())
    assert {r["end_state"] for r in rows.values()} == {"running"}
    assert all(any("respawn" in risk for risk in r["risks"]) for r in rows.values())
    assert {(r["host"], r["current_state"]) for r in rows.values()} == {(h, "paused") for h in fleet}
    for u in unchanged:
        u.check()


def test_cancel_starts_nothing_more(fleet, cluster):
    tag = f"ca{uuid.uuid4().hex[:4]}"
    guests = [g for host, g in make_fleet({"hv-b": fleet["hv-b"]}, cluster, per_host=5, tag=tag)]
    unchanged = {g.name: Unchanged(g) for g in guests}
    handle = api.revert_batch("golden", [f"{tag}-*"], max_total=1, cluster=cluster, allow_respawn=True,
                              end_state="paused")
    handle.cancel()
    record = handle.wait(300)
    states = {i["domain"]: i["state"] for i in record["items"]}
    assert set(states.values()) <= {"succeeded", "not-started"}
    assert list(states.values()).count("not-started") >= 3 and record["halted"] == "cancelled"
    for name, state in states.items():
        if state == "not-started":
            unchanged[name].check()


def test_a_host_whose_worker_dies_mid_batch(fleet, cluster, extra_hosts):
    tag = f"kw{uuid.uuid4().hex[:4]}"
    make_fleet(fleet, cluster, per_host=3, tag=tag)
    handle = api.revert_batch("golden", [f"{tag}-*"], max_per_host=1, cluster=cluster, allow_respawn=True,
                              end_state="paused")
    deadline = time.monotonic() + 60
    while not any(i["host"] == "hv-c" and i["state"] == "running" for i in handle.record()["items"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    extra_hosts["hv-c"].kill_worker()
    try:
        record = handle.wait(300)
    finally:
        extra_hosts["hv-c"].start_worker()  # its recovery settles what it left
    by_host = {}
    for item in record["items"]:
        by_host.setdefault(item["host"], []).append(item["state"])
    assert set(by_host["hv-b"]) == {"succeeded"} and set(by_host[next(h for h in by_host if h not in
                                                                       ("hv-b", "hv-c"))]) == {"succeeded"}
    assert "succeeded" not in by_host["hv-c"][1:] and set(by_host["hv-c"]) <= {"succeeded", "failed", "not-started"}
    assert "not-started" in by_host["hv-c"]
