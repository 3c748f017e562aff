"""`virt-revert` as a user runs it: exit statuses, step-by-step output, one JSON object."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks.api import RevertHandle
from tests.integration.conftest import HOST, wait_in_inventory, worker_env

pytestmark = pytest.mark.integration

RECORD_FIELDS = {"revert_id", "domain", "snapshot", "host", "state", "end_state", "steps", "created_files",
                 "safety_snapshot", "error"}


@pytest.fixture
def cli(config, worker):
    env = worker_env(config)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True,
                              text=True, timeout=180)

    return run


def test_revert_json_and_status(guests, cli):
    g = guests.create()
    g.snapshot("s1", memory=True)
    done = cli("revert", g.name, "s1", "--host", HOST, "--allow-respawn", "--paused", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert set(record) >= RECORD_FIELDS
    assert (record["domain"], record["snapshot"], record["host"], record["state"], record["end_state"]) == (
        g.name, "s1", HOST, "succeeded", "paused")
    assert all({"name", "status", "started", "finished"} <= set(s) for s in record["steps"])
    assert record["error"] is None and record["created_files"]

    status = cli("status", record["revert_id"], "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == record


def test_revert_shows_each_step(guests, cli, cluster):
    g = guests.create()
    g.snapshot("s1", memory=True)
    wait_in_inventory(cluster, g.name, HOST)
    done = cli("revert", g.name, "s1", "--allow-respawn")  # --host omitted: found in the inventory
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"Reverting domain '{g.name}' to snapshot 's1' on host '{HOST}'")
    for number, step in enumerate(["validate", "open_memory_image", "stop", "recreate_overlays", "restore",
                                   "resume", "emit_events"], 1):
        assert any(f"[{number}/7] {step}" in line for line in lines), done.stdout
    assert f"Domain '{g.name}' reverted to 's1': now running." in done.stdout


def test_refusal_exits_2_with_code_and_hint(guests, cli):
    g = guests.create()
    g.snapshot("s1", memory=True)
    done = cli("revert", g.name, "s1", "--host", HOST, "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "revert-risky"
    human = cli("revert", g.name, "s1", "--host", HOST)
    assert human.returncode == 2
    assert "revert-risky" in human.stdout and "hint: pass --allow-respawn" in human.stdout


def test_no_wait_returns_the_id_at_once(guests, cli, cluster):
    g = guests.create()
    g.snapshot("s1", memory=True)
    started = cli("revert", g.name, "s1", "--host", HOST, "--allow-respawn", "--no-wait")
    assert started.returncode == 0
    revert_id = started.stdout.strip()
    assert len(revert_id) == 12
    assert RevertHandle(revert_id, cluster).wait(120)["state"] == "succeeded"


def test_status_of_unknown_id(cli):
    done = cli("status", "000000000000")
    assert done.returncode == 1 and "no revert '000000000000'" in done.stderr
