"""The real stack for integration tests: Redis, a libvirtd host in its own
mount namespace, a Celery worker process bound to it, counter guests.

Everything started here is stopped at the end by the PIDs started here.
"""
from __future__ import annotations

import dataclasses
import os
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
    if not os.environ.get("VIRT_REVERT_KEEP_STACK"):  # set it to read the worker and libvirtd logs after a run
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(stack_dir):
    # Persistent as in production (AOF, fsync always): the fault tests restart it mid-revert.
    data = stack_dir / "redis"
    data.mkdir()
    with RedisServer(data_dir=data) as server:
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
                  state_dir=str(stack_dir / "state"), heartbeat_interval=1, heartbeat_ttl=5,
                  host_lost_after=10)


def worker_env(config: Config) -> dict[str, str]:
    return env_for(config)


def wait_for_host(cluster: Cluster, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while name not in cluster.store.live_hosts():
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker for host {name} sent no heartbeat in {timeout} s")
        time.sleep(0.1)


def wait_in_inventory(cluster: Cluster, domain: str, host: str, snapshot: str | None = None,
                      timeout: float = 30) -> None:
    """Until the host's worker has published an inventory that lists the domain (with `snapshot`)."""
    deadline = time.monotonic() + timeout
    while not any(row["name"] == domain for row in cluster.inventory(host, snapshot)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"domain {domain} not in {host}'s inventory after {timeout} s")
        time.sleep(0.05)


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


@pytest.fixture
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



FAULTY = "faulty"


class FaultyHost:
    """A second host name served by workers on the same libvirtd, started with fault points armed
    (see workers/faults.py), crashed, and started again to recover."""

    def __init__(self, config: Config, uri: str, cluster: Cluster, stack_dir: Path):
        self.state_dir = stack_dir / "state-faulty"
        self.config = dataclasses.replace(config, state_dir=str(self.state_dir))
        self.uri, self.cluster, self.stack_dir = uri, cluster, stack_dir
        self.proc: WorkerProcess | None = None

    def start(self, faults: str = "", **settings) -> WorkerProcess:
        self.stop()
        env = env_for(dataclasses.replace(self.config, **settings))
        env["VIRT_REVERT_FAULTS"] = faults
        self.proc = WorkerProcess(FAULTY, self.uri, env, concurrency=4,
                                  log_path=self.stack_dir / f"worker-{FAULTY}.log").start()
        deadline = time.monotonic() + 30
        while (self.cluster.store.host_info(FAULTY) or {}).get("pid") != self.proc.pid:
            if self.proc.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker for {FAULTY} did not start; see {self.proc.log_path}")
            time.sleep(0.1)
        return self.proc

    def wait_dead(self, timeout: float = 60) -> None:
        self.proc.proc.wait(timeout)

    def wait_paused(self, revert_id: str, point: str, timeout: float = 60) -> Path:
        marker = self.state_dir / "faults" / f"{revert_id}.{point}"
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker never paused at {point}")
            time.sleep(0.05)
        return marker

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture
def faulty(config, host, cluster, stack_dir):
    faulty_host = FaultyHost(config, host.uri, cluster, stack_dir)
    yield faulty_host
    faulty_host.stop()


EXTRA_HOSTS = ("hv-b", "hv-c")


class ClusterHost:
    """One more simulated hypervisor host with its worker, which a test may kill and start again."""

    def __init__(self, name: str, libvirt_host: LibvirtHost, config: Config, cluster: Cluster, stack_dir: Path):
        self.name, self.libvirt, self.cluster = name, libvirt_host, cluster
        self.env = env_for(dataclasses.replace(config, storage_roots=(str(libvirt_host.images_dir),)))
        self.log = stack_dir / f"worker-{name}.log"
        self.worker: WorkerProcess | None = None

    def start_worker(self) -> None:
        self.worker = WorkerProcess(self.name, self.libvirt.uri, self.env, concurrency=4, log_path=self.log).start()
        deadline = time.monotonic() + 30
        while (self.cluster.store.host_info(self.name) or {}).get("pid") != self.worker.pid:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker for {self.name} sent no heartbeat")
            time.sleep(0.1)

    def kill_worker(self) -> None:
        self.worker.proc.kill()
        self.worker.proc.wait()


@pytest.fixture(scope="session")
def extra_hosts(config, cluster, stack_dir, worker):
    """Two more libvirtd daemons side by side with the session's, each with its worker."""
    started: dict[str, ClusterHost] = {}
    try:
        for name in EXTRA_HOSTS:
            started[name] = ClusterHost(name, LibvirtHost(name, stack_dir / name).start(), config, cluster,
                                        stack_dir)
            started[name].start_worker()
        yield started
    finally:
        for extra in started.values():
            if extra.worker is not None:
                extra.worker.stop()
            extra.libvirt.stop()


@pytest.fixture
def fleet(extra_hosts, host):
    """A guest factory per host: the session's host and the two extra ones."""
    uris = {HOST: (host.uri, host.images_dir), **{n: (h.libvirt.uri, h.libvirt.images_dir)
                                                   for n, h in extra_hosts.items()}}
    factories = {name: GuestFactory(open_connection(uri), Path(images)) for name, (uri, images) in uris.items()}
    yield factories
    for factory in factories.values():
        factory.remove_all()
        factory.conn.close()
