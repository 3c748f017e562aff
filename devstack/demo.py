"""`make demo`: revert a real guest through the whole pipeline, on this machine.

    python -m devstack.demo          # start (or reuse) the stack, build a guest, revert it
    python -m devstack.demo --stop   # stop everything the demo started

The stack is Redis, the machine's libvirtd (qemu:///system), one worker for
host "local" and Flower, all on 127.0.0.1. The daemons outlive this process
(the user explores Flower and `virt-revert status` afterwards), so each runs
in its own session with its PID in STATE_DIR; a later run reuses those still
alive and --stop ends them by those PIDs, never by name.

The guest is the counter guest (devstack.guest): its memory counts timer ticks
and its disk records the count every second, so the output proves that the
revert brought back memory *and* disk, and that nothing written after the
snapshot was lost.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from devstack import guest
from devstack.hosts import SystemLibvirtd, fix_kvm_permissions, open_connection, virt_type
from devstack.process import free_port, pid_alive, read_pid, terminate
from devstack.redis import RedisServer
from devstack.workers import FlowerProcess, WorkerProcess, env_for
from tasks.config import Config
from tasks.model import STEPS

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path("/var/lib/virt-revert/demo")
IMAGE_DIR = Path("/var/lib/libvirt/images/virt-revert-demo")
DOMAIN, SNAPSHOT, HOST = "virt-revert-demo", "demo-snap", "local"
REDIS_PORT, FLOWER_PORT, FLOWER_USER = 6379, 5555, "virt-revert"
BOOT_TIMEOUT = 90  # under nested KVM SeaBIOS needs ~10 s to reach the boot sector
# What each recorded PID's command line must contain: a PID reused since is never signalled.
SERVICES = {"flower": "flower", "worker": "tasks.cli", "redis": "redis-server"}


# --- recorded processes -------------------------------------------------------------------------

def recorded(name: str, token: str) -> int | None:
    """The PID in STATE_DIR/<name>.pid if that process still runs `token`; a stale file is removed."""
    pidfile = STATE_DIR / f"{name}.pid"
    pid = read_pid(pidfile)
    if pid and pid_alive(pid):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except FileNotFoundError:
            pass
    pidfile.unlink(missing_ok=True)
    return None


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a daemon in its own session (so Ctrl-C or a closed terminal spare it), log in STATE_DIR."""
    with open(STATE_DIR / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (STATE_DIR / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def stop_recorded(name: str) -> None:
    pid = recorded(name, SERVICES[name])
    if pid:
        terminate(pid)  # SIGTERM: Celery's warm shutdown; SIGKILL after 15 s
        print(f"stopped {name} (pid {pid})")
    for suffix in ("pid", "port"):
        (STATE_DIR / f"{name}.{suffix}").unlink(missing_ok=True)


def wait_for(check, timeout: float, what: str, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = f"; see {STATE_DIR / log}" if log else ""
            raise SystemExit(f"demo: {what} not ready after {timeout:.0f} s{tail}")
        time.sleep(0.2)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_port(name: str, wanted: int) -> int:
    """`wanted` if free, else any free port (and say so): the demo never touches a foreign service."""
    if port_free(wanted):
        return wanted
    port = free_port()
    print(f"note: port {wanted} is taken by another process; the demo's {name} uses port {port}")
    return port


# --- the stack ----------------------------------------------------------------------------------

def start_redis() -> RedisServer:
    """Redis without persistence; reused while its recorded PID runs and answers PING."""
    port = read_pid(STATE_DIR / "redis.port")  # same one-number format as a pid file
    if recorded("redis", SERVICES["redis"]) and port and RedisServer(port).ping():
        server = RedisServer(port)
        print(f"Redis     {server.url}  (reused, pid {read_pid(STATE_DIR / 'redis.pid')})")
        return server
    stop_recorded("redis")
    for name in ("worker", "flower"):  # they are bound to the old Redis
        stop_recorded(name)
    server = RedisServer(pick_port("Redis", REDIS_PORT))
    pid = spawn("redis", ["redis-server", "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--maxmemory-policy", "noeviction"])
    (STATE_DIR / "redis.port").write_text(f"{server.port}\n")
    wait_for(server.ping, 10, "Redis", "redis.log")
    print(f"Redis     {server.url}  (started, pid {pid})")
    return server


def start_libvirtd() -> None:
    """Reuse a running qemu:///system, else start one; --stop ends it only if the demo started it."""
    recorded("libvirtd", "libvirtd")  # drop stale pid files so SystemLibvirtd.stop can't hit a reused PID
    recorded("virtlogd", "virtlogd")
    before = read_pid(STATE_DIR / "libvirtd.pid")
    SystemLibvirtd(STATE_DIR).ensure_running()
    after = read_pid(STATE_DIR / "libvirtd.pid")
    how = ("started by the demo" if after != before else
           "reused, started by an earlier demo" if after else "already running, not the demo's")
    print(f"libvirtd  {SystemLibvirtd.uri}  ({how})")


def demo_env(redis_url: str) -> dict[str, str]:
    """The environment of the worker, Flower and the CLI: every Redis role on the demo's Redis."""
    return env_for(Config(broker_url=redis_url, storage_roots=(str(IMAGE_DIR),)))


def start_worker(env: dict[str, str]) -> None:
    """One worker for host 'local'; ready once its heartbeat is in Redis."""
    from tasks import config as config_mod
    from tasks.api import Cluster

    pid = recorded("worker", SERVICES["worker"])
    how = "reused"
    if not pid:
        pid, how = spawn("worker", WorkerProcess(HOST, SystemLibvirtd.uri, concurrency=2).argv, env), "started"
    store = Cluster(config_mod.load(env)).store
    # The heartbeat carries the worker's PID: a dead predecessor's heartbeat (30 s TTL) doesn't count.
    wait_for(lambda: store.live_hosts().get(HOST, {}).get("pid") == pid, 60,
             f"worker heartbeat of host '{HOST}'", "worker.log")
    print(f"worker    host '{HOST}'  ({how}, pid {pid}, heartbeat seen)")


def start_flower(env: dict[str, str], redis_url: str) -> tuple[str, str]:
    """Flower with basic auth (its /api needs it); started before the revert so it sees every event."""
    password_file = STATE_DIR / "flower-password"
    if not password_file.exists():
        password_file.touch(mode=0o600)
        password_file.write_text(secrets.token_urlsafe(12) + "\n")
    password = password_file.read_text().strip()
    pid = recorded("flower", SERVICES["flower"])
    port = read_pid(STATE_DIR / "flower.port")
    how = "reused"
    if not (pid and port):
        stop_recorded("flower")
        port = pick_port("Flower", FLOWER_PORT)
        argv = FlowerProcess(redis_url, port, f"{FLOWER_USER}:{password}").argv
        pid, how = spawn("flower", argv, env), "started"
        (STATE_DIR / "flower.port").write_text(f"{port}\n")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: flower_tasks(url, password) is not None, 30, "Flower", "flower.log")
    print(f"Flower    {url}  ({how}, pid {pid})")
    return url, password


def flower_tasks(url: str, password: str) -> dict | None:
    """Flower's /api/tasks (task id -> info), or None while it does not answer."""
    auth = base64.b64encode(f"{FLOWER_USER}:{password}".encode()).decode()
    request = urllib.request.Request(f"{url}/api/tasks", headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return json.load(reply)
    except OSError:
        return None


# --- the guest ----------------------------------------------------------------------------------

def remove_demo_domain(conn) -> None:
    """Destroy and undefine the demo domain, then delete its images.

    Every file of the demo domain, including those virt-revert created beside
    them (new tops, safety overlays), is named `virt-revert-demo.*` in the
    demo's own image directory; nothing else there is touched.
    """
    import libvirt
    try:
        dom = conn.lookupByName(DOMAIN)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        print(f"removed the demo domain '{DOMAIN}' with its snapshot metadata and images")
    for path in IMAGE_DIR.glob(f"{DOMAIN}.*"):
        if path.is_file():
            path.unlink()


def disk_source(dom) -> str:
    """The file vda writes to now."""
    return ET.fromstring(dom.XMLDesc(0)).find("devices/disk/source").get("file")


def build_guest(conn):
    """Define and boot the counter guest; returns once its counter runs and it wrote its disk once."""
    fix_kvm_permissions()
    kind = virt_type()
    base = guest.build_disk(IMAGE_DIR / f"{DOMAIN}.base.qcow2")
    dom = conn.defineXML(guest.domain_xml(DOMAIN, base, virt_type=kind))
    dom.create()
    print(f"guest     '{DOMAIN}' ({kind}, 64 MiB) booting...", end=" ", flush=True)
    started = time.monotonic()
    guest.wait_for_counter(dom, 1, timeout=BOOT_TIMEOUT)
    guest.wait_for_disk_counter(base, 1, timeout=10)
    print(f"counting after {time.monotonic() - started:.1f} s")
    return dom, base


def take_snapshot(dom) -> tuple[Path, Path]:
    """External memory+disk snapshot: the memory image is taken when libvirt pauses the guest at the start."""
    import libvirt
    overlay, mem = IMAGE_DIR / f"{DOMAIN}.{SNAPSHOT}.qcow2", IMAGE_DIR / f"{DOMAIN}.{SNAPSHOT}.mem"
    dom.snapshotCreateXML(
        f"<domainsnapshot><name>{SNAPSHOT}</name><memory snapshot='external' file='{mem}'/>"
        f"<disks><disk name='vda' snapshot='external'><driver type='qcow2'/><source file='{overlay}'/>"
        f"</disk></disks></domainsnapshot>", libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
    return overlay, mem


def run_cli_revert(env: dict[str, str]) -> str:
    """The real CLI, as a user would type it; its output is shown as is. Returns the revert id."""
    args = ["revert", DOMAIN, SNAPSHOT, "--host", HOST, "--allow-respawn", "--paused", "--timeout", "120"]
    print(f"\n$ virt-revert {' '.join(args)}")
    proc = subprocess.Popen([sys.executable, "-m", "tasks.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    revert_id = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        revert_id = revert_id or next(iter(re.findall(r"\(revert (\w+)\)", line)), None)
    if proc.wait() != 0 or not revert_id:
        raise SystemExit(f"demo: the revert failed (exit {proc.returncode}); see {STATE_DIR / 'worker.log'}")
    print()
    return revert_id


# --- main ---------------------------------------------------------------------------------------

def demo() -> None:
    from tasks.app import task_name  # importing tasks.app loads the config: not needed by --stop
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    IMAGE_DIR.chmod(0o755)  # QEMU runs as libvirt-qemu
    print(f"virt-revert demo: state in {STATE_DIR}, images in {IMAGE_DIR}")

    redis = start_redis()
    start_libvirtd()
    env = demo_env(redis.url)
    start_worker(env)
    flower_url, password = start_flower(env, redis.url)

    conn = open_connection(SystemLibvirtd.uri)
    remove_demo_domain(conn)
    dom, base = build_guest(conn)
    time.sleep(1)
    snap_counter = guest.read_counter(dom)  # a lower bound of the counter in the memory image
    overlay, _mem = take_snapshot(dom)
    snap_disk = guest.read_disk_counter(base)  # base is frozen from now on
    print(f"snapshot  '{SNAPSHOT}' (external, memory + disk) taken; the guest runs on for 3 s")
    time.sleep(3)
    now_counter = guest.read_counter(dom)
    now_disk = guest.wait_for_disk_counter(overlay, snap_disk + 1, timeout=10)
    print(f"at snapshot: counter {snap_counter}, disk {snap_disk}; now: counter {now_counter}, disk {now_disk}")

    revert_id = run_cli_revert(env)

    dom = conn.lookupByName(DOMAIN)
    top = disk_source(dom)
    old_disk = guest.read_disk_counter(overlay)
    print(f"memory counter back to {guest.read_counter(dom)} "
          f"(snapshot {snap_counter}, before revert {now_counter})")
    print(f"disk: new top {Path(top).name} reads {guest.read_disk_counter(top)} (snapshot {snap_disk}), "
          f"old overlay {overlay.name} kept with {old_disk}"
          + ("" if old_disk == now_disk else f" (>= {now_disk}: the guest wrote on until the revert)"))
    dom.resume()
    time.sleep(1)
    print(f"resumed '{DOMAIN}': it runs on from the snapshot (counter {guest.read_counter(dom)} a second later)")
    cli = Path(sys.executable).with_name("virt-revert")
    cli_cmd = os.path.relpath(cli) if cli.exists() else f"{sys.executable} -m tasks.cli"
    print(f"details:  VIRT_REVERT_BROKER_URL={redis.url} {cli_cmd} status {revert_id}")

    ours, total = set(), 0
    deadline = time.monotonic() + 10  # Flower ingests the events a moment after the steps ran
    while len(ours) < len(STEPS) and time.monotonic() < deadline:
        time.sleep(0.5)
        tasks = flower_tasks(flower_url, password) or {}
        names = {tid: t.get("name") or "" for tid, t in tasks.items()}
        total = sum(n.startswith("virt_revert.revert.") for n in names.values())
        ours = {n for tid, n in names.items() if tid.startswith(f"{revert_id}.") and n}
    print(f"\nFlower:   {flower_url}  user {FLOWER_USER}, password {password} "
          f"(saved in {STATE_DIR / 'flower-password'})")
    print(f"          its task list shows {total} virt_revert.revert.* task(s), {len(ours)} of them this "
          f"revert's: {', '.join(s for s in STEPS if task_name(s) in ours)}")
    print("stop it all: make demo-stop")


def stop() -> None:
    """Undo the demo: domain and images, then Flower, worker, Redis, libvirtd (only if the demo started it)."""
    import libvirt
    if STATE_DIR.exists():
        try:
            conn = open_connection(SystemLibvirtd.uri)
        except libvirt.libvirtError:
            conn = None  # no libvirtd: no domain to remove
        if conn is not None:
            remove_demo_domain(conn)
            conn.close()
        for name in ("flower", "worker", "redis"):
            stop_recorded(name)
        pids = {name: recorded(name, name) for name in ("libvirtd", "virtlogd")}  # only the demo's
        SystemLibvirtd(STATE_DIR).stop()
        for name, pid in pids.items():
            if pid:
                print(f"stopped {name} (pid {pid})")
    print("demo stopped")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--stop", action="store_true", help="stop everything the demo started")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it starts libvirtd and QEMU guests)")
    try:
        stop() if args.stop else demo()
    except KeyboardInterrupt:
        raise SystemExit("\ninterrupted; the stack runs on: `make demo` again, or `make demo-stop`")


if __name__ == "__main__":
    main()
