"""Several hosts: three libvirtd daemons side by side (each in its own mount namespace), a worker
each; the inventory, `ls`/`hosts`, and reverts routed by it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks import api
from tests.integration.conftest import EXTRA_HOSTS, HOST, env_for, wait_in_inventory

pytestmark = pytest.mark.integration


def ls(config, *args):
    done = subprocess.run([sys.executable, "-m", "tasks.cli", "ls", "--json", *args], env=env_for(config),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_inventory_lists_each_hosts_domains_and_snapshots(fleet, cluster, config):
    guests = {name: factory.create() for name, factory in fleet.items()}
    for name, g in guests.items():
        g.snapshot("golden", memory=True)
        wait_in_inventory(cluster, g.name, name, snapshot="golden")
    assert set(cluster.store.live_hosts()) >= {HOST, *EXTRA_HOSTS}
    rows = {row["name"]: row for row in ls(config, "--snapshot", "golden")}
    for name, g in guests.items():
        row = rows[g.name]
        assert row["host"] == name and row["uuid"] == g.dom.UUIDString() and row["state"] == "running"
        assert [(s["name"], s["kind"], s["state"], s["has_memory"]) for s in row["snapshots"]] == [
            ("golden", "external", "running", True)]
    only_b = ls(config, "--host", "hv-b")
    assert {row["host"] for row in only_b} == {"hv-b"} and guests["hv-b"].name in {r["name"] for r in only_b}


def test_revert_without_host_goes_to_the_domains_host(fleet, cluster):
    g = fleet["hv-c"].create()
    g.snapshot("s1", memory=True)
    wait_in_inventory(cluster, g.name, "hv-c")
    record = api.revert(g.name, "s1", allow_respawn=True, cluster=cluster).wait(120)
    assert record["state"] == "succeeded" and record["host"] == "hv-c"
    assert g.refresh().current_snapshot() == "s1"


def test_ambiguous_and_unknown_domains_are_refused_with_candidates(fleet, cluster):
    twin_b = fleet["hv-b"].create(start=False)
    twin_c = fleet["hv-c"].create(start=False, name=twin_b.name)  # same name, another host
    wait_in_inventory(cluster, twin_b.name, "hv-b")
    wait_in_inventory(cluster, twin_c.name, "hv-c")
    record = api.revert(twin_b.name, "s1", cluster=cluster).wait(10)
    assert record["state"] == "refused" and record["error"]["code"] == "domain-ambiguous"
    assert "hv-b, hv-c" in record["error"]["message"]
    record = api.revert("no-such-domain", "s1", cluster=cluster).wait(10)
    assert record["state"] == "refused" and record["error"]["code"] == "domain-not-found"
    assert "hv-b" in record["error"]["message"]
