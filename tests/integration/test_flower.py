"""Flower, started against the same broker, sees every step of a revert as its own named task."""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from devstack.process import free_port
from devstack.workers import FlowerProcess
from tasks.model import STEPS
from tests.integration.conftest import worker_env

pytestmark = pytest.mark.integration
AUTH = "virt-revert:test-password"


def get(url: str, auth: bool = True) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


@pytest.fixture
def flower(config, stack_dir):
    port = free_port()
    proc = FlowerProcess(config.broker_url, port, AUTH, env=worker_env(config), log_path=stack_dir / "flower.log")
    with proc:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(f"{base}/api/workers"), 60, "Flower did not answer")
        time.sleep(1)  # its event receiver connects just after the web server
        yield base


def test_flower_lists_the_seven_named_tasks(flower, guests, revert):
    g = guests.create()
    g.snapshot("s1", memory=True)
    record = revert(g.name, "s1", allow_respawn=True)
    assert record["state"] == "succeeded"

    def revert_tasks():
        tasks = json.loads(get(f"{flower}/api/tasks"))
        mine = {t["name"]: t for t in tasks.values() if t["uuid"].startswith(record["revert_id"] + ".")}
        return mine if len(mine) == len(STEPS) and all(t["state"] == "SUCCESS" for t in mine.values()) else None

    mine = wait_until(revert_tasks, 20, "Flower did not see the seven tasks succeed")
    assert set(mine) == {f"virt_revert.revert.{step}" for step in STEPS}
    assert {t["worker"] for t in mine.values()} == {"virt-revert@itest"}
    assert b"flower_events_total" in get(f"{flower}/metrics", auth=False)
