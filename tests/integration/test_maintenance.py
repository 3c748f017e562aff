"""`virt-revert recover` and `virt-revert prune` through the CLI, on the real stack."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks import api
from tests.integration.conftest import FAULTY, HOST, worker_env
from tests.integration.guests import assert_nothing_lost, hash_files

pytestmark = pytest.mark.integration


def cli(config, *args):
    done = subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=worker_env(config),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_recover_leaves_a_revert_in_flight_alone(guests, faulty, cluster, config):
    g = guests.create()
    g.snapshot("s1", memory=True)
    faulty.start(faults="stop:after=pause")
    handle = api.revert(g.name, "s1", FAULTY, allow_respawn=True, cluster=cluster)
    marker = faulty.wait_paused(handle.id, "stop:after")
    # the stop step holds the revert's journal: even with --stale-after 0 recovery must not touch it
    assert cli(config, "recover", "--host", FAULTY, "--stale-after", "0", "--json") == []
    marker.unlink()
    assert handle.wait(120)["state"] == "succeeded"
    assert cli(config, "recover", "--host", FAULTY, "--stale-after", "0", "--json") == []


def test_prune_keeps_what_is_in_use_and_dry_run_changes_nothing(guests, revert, config):
    g = guests.create()
    s1_overlay, _ = g.snapshot("s1", memory=True)
    first = revert(g.name, "s1", allow_respawn=True, end_state="paused")
    second = revert(g.name, "s1", allow_respawn=True, end_state="paused")
    first_top = [f for f in first["created_files"] if "virt-revert-pre" not in f][0]
    safety_files = [f for r in (first, second) for f in r["created_files"] if "virt-revert-pre" in f]
    before = hash_files(g.images)
    snapshots = sorted(s.getName() for s in g.dom.listAllSnapshots())

    dry = cli(config, "prune", g.name, "--host", HOST, "--keep", "0", "--dry-run", "--json")
    assert sorted(dry["snapshots"]) == sorted([first["safety_snapshot"], second["safety_snapshot"]])
    assert sorted(dry["files"]) == sorted(safety_files + [first_top])
    assert str(s1_overlay) in dry["kept"]  # snapshot s1 still records it
    assert hash_files(g.images) == before
    assert sorted(s.getName() for s in g.dom.listAllSnapshots()) == snapshots

    newest_kept = cli(config, "prune", g.name, "--host", HOST, "--keep", "1", "--json")
    assert newest_kept["snapshots"] == [first["safety_snapshot"]]
    all_gone = cli(config, "prune", g.name, "--host", HOST, "--keep", "0", "--json")
    assert all_gone["snapshots"] == [second["safety_snapshot"]]
    removed = set(newest_kept["files"]) | set(all_gone["files"])
    assert removed == set(safety_files) | {first_top}
    assert_nothing_lost({p: h for p, h in before.items() if p not in removed}, g.images)
    assert sorted(s.getName() for s in g.dom.listAllSnapshots()) == ["s1"]
    # the domain runs on, and reverting still works
    assert revert(g.name, "s1", allow_respawn=True)["state"] == "succeeded"


def test_prune_refuses_files_of_other_domains(guests, revert, config):
    g = guests.create()
    g.snapshot("s1", memory=True)
    first = revert(g.name, "s1", allow_respawn=True, end_state="paused")
    first_top = [f for f in first["created_files"] if "virt-revert-pre" not in f][0]
    revert(g.name, "s1", allow_respawn=True, end_state="paused")
    # another domain on the host now uses the first revert's overlay as its backing file
    other = guests.create(start=False)
    chained = g.images / f"{other.name}.chained.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", first_top, str(chained)],
                   check=True)
    other.dom.updateDeviceFlags(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                                f"<source file='{chained}'/><target dev='vda' bus='virtio'/></disk>", 2)
    report = cli(config, "prune", g.name, "--host", HOST, "--keep", "0", "--json")
    assert first_top in report["kept"] and first_top not in report["files"]
    assert (g.images / first_top).exists()
