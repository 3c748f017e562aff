"""The devstack against real processes: Redis, a namespaced libvirtd, the counter guest.

Each fixture stops what it started, by PID, and the host test checks that
every PID it recorded is gone afterwards.
"""

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from devstack import guest
from devstack.hosts import LibvirtHost, fix_kvm_permissions, open_connection, virt_type
from devstack.process import pid_alive
from devstack.redis import RedisServer


def unique(name: str) -> str:
    """Domain names must be unique on the machine (QEMU's cgroups are named after them)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def host_root():
    """A root libvirt-qemu can reach (pytest's tmp_path sits under a 0700 dir)."""
    root = Path(tempfile.mkdtemp(prefix="vr-test-host-"))
    yield root
    shutil.rmtree(root)


@pytest.fixture
def host(host_root):
    fix_kvm_permissions()
    host = LibvirtHost("test", host_root).start()
    yield host
    host.stop()


def test_redis_answers_and_stops(redis):
    assert redis.ping()
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    pid = redis.pid
    redis.stop()
    assert not pid_alive(pid)
    assert not redis.ping()


def test_boot_sector_is_built_from_source():
    sector = guest.boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")


@pytest.mark.parametrize("requested", ["detected", "qemu"])
def test_counter_guest_advances_in_memory_and_on_disk(host, requested):
    vtype = virt_type() if requested == "detected" else requested
    image = guest.build_disk(host.images_dir / "counter.qcow2")
    assert guest.read_disk_counter(image) is None
    conn = open_connection(host.uri)
    try:
        dom = conn.createXML(guest.domain_xml(unique(f"vr-test-counter-{vtype}"), image, vtype))
        first = guest.wait_for_counter(dom, 1)
        guest.wait_for_counter(dom, first + 9, timeout=5)  # 18.2 ticks a second
        on_disk = guest.wait_for_disk_counter(image, 1)
        assert guest.wait_for_disk_counter(image, on_disk + 1, timeout=5) > on_disk
    finally:
        conn.close()


def test_host_stop_leaves_no_process(host):
    image = guest.build_disk(host.images_dir / "counter.qcow2")
    conn = open_connection(host.uri)
    dom = conn.defineXML(guest.domain_xml(unique("vr-test-stop"), image, "qemu"))  # TCG boots in 0.1 s
    dom.create()
    guest.wait_for_counter(dom, 1)
    conn.close()
    pids = [host.pid, *host.daemon_pids, *host.qemu_pids()]
    assert len(pids) == 4  # tini, libvirtd, virtlogd, qemu
    assert all(pid_alive(pid) for pid in pids)

    host.stop()

    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not host.socket.exists()
