"""The real stack for integration tests: Redis, a libvirtd host in its own
mount namespace, a Celery worker process bound to it, counter guests.

Everything started here is stopped at the end by the PIDs started here.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from devstack.hosts import LibvirtHost, fix_kvm_permissions, open_connection
from devstack.redis import RedisServer
from devstack.workers import WorkerProcess, env_for
from tasks.api import Cluster
from tasks.config import Config
from tests.integration.guests import GuestFactory

HOST = "itest"


@pytest.fixture(scope="session")
def stack_dir():
    # /var/tmp: every path component must be searchable by libvirt-qemu.
    path = Path(tempfile.mkdtemp(prefix="virt-revert-it-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def host(stack_dir, small_root):  # mounts made after the host's namespace exists stay invisible to it
    fix_kvm_permissions()
    with LibvirtHost(HOST, stack_dir / HOST) as started:
        (stack_dir / "outside").mkdir(mode=0o755)
        yield started


@pytest.fixture(scope="session")
def small_root(stack_dir):
    """A 65 MiB tmpfs storage root: a guest fits, a revert's reserve of 64 MiB free does not."""
    path = stack_dir / "small"
    path.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=65m,mode=0755", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=False)


@pytest.fixture(scope="session")
def config(redis_server, host, stack_dir, small_root) -> Config:
    return Config(broker_url=redis_server.url, storage_roots=(str(host.images_dir), str(small_root)),
                  state_dir=str(stack_dir / "state"), heartbeat_interval=1, heartbeat_ttl=3)


def worker_env(config: Config) -> dict[str, str]:
    return env_for(config)


def wait_for_host(cluster: Cluster, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while name not in cluster.store.live_hosts():
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker for host {name} sent no heartbeat in {timeout} s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def cluster(config) -> Cluster:
    return Cluster(config)


@pytest.fixture(scope="session")
def worker(config, host, cluster, stack_dir):
    proc = WorkerProcess(HOST, host.uri, worker_env(config), concurrency=4,
                         log_path=stack_dir / f"worker-{HOST}.log")
    with proc:
        wait_for_host(cluster, HOST)
        yield proc


@pytest.fixture(scope="session")
def conn(host):
    connection = open_connection(host.uri)
    yield connection
    connection.close()


@pytest.fixture
def guests(conn, host, stack_dir):
    factory = GuestFactory(conn, Path(host.images_dir))
    yield factory
    factory.remove_all()


@pytest.fixture
def revert(cluster, worker):
    """`tasks.api.revert` bound to this stack, waiting for the result."""
    from tasks import api

    def run(domain, snapshot, timeout=120, **flags):
        handle = api.revert(domain, snapshot, HOST, cluster=cluster, **flags)
        return handle.wait(timeout)

    return run

