"""Worker entry point: one Celery worker bound to one host's libvirtd, consuming only `host.<name>`.

Threads, not processes: steps spend their time waiting on libvirtd and
qemu-img, and one libvirt connection serves all of them.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import threading
import time

from tasks import locks
from tasks.app import app, host_queue
from tasks.config import Config
from tasks.store import Store
from workers import celery_tasks, inventory, logs, recovery
from workers import conn as conns
from workers.journal import unfinished

log = logging.getLogger("virt_revert.worker")


def host_info(host: str, uri: str) -> dict:
    conn = conns.connection(uri)
    return {
        "host": host,
        "uri": uri,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "libvirt_version": _version(conn.getLibVersion()),
        "qemu_version": _version(conn.getVersion()),
        "seen": time.time(),
        "domains": inventory.domains(conn),
    }


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


_inventory_changed = threading.Event()


def _watch_domains(conn) -> None:
    """A domain defined, started, stopped or undefined: publish the inventory now, not at the next beat."""
    import libvirt

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                lambda *_args: _inventory_changed.set(), None)


def _heartbeat(store: Store, host: str, uri: str, interval: float, ttl: int) -> None:
    while True:
        try:
            store.heartbeat(host, host_info(host, uri), ttl)
        except Exception:  # libvirtd or Redis down: stop announcing, so clients see the host offline
            log.warning("heartbeat failed", exc_info=True, extra={"host": host})
        if _inventory_changed.wait(interval):
            time.sleep(0.5)  # a revert fires several events: publish once after the burst
        _inventory_changed.clear()


def _housekeeping(host: str, uri: str, store: Store, cfg: Config) -> None:
    """Keep the domain locks of this host's unfinished reverts alive while their chains run, and
    settle the ones nobody has moved for `stale_after` seconds (e.g. a rollback that failed while
    libvirtd was down)."""
    last_recovery = time.monotonic()
    while True:
        time.sleep(cfg.lock_ttl / 3)
        try:
            for journal in unfinished(cfg.state_dir):
                lock = journal.state().lock
                if lock:
                    locks.renew(store.redis, lock["uuid"], journal.revert_id, cfg.lock_ttl)
            if time.monotonic() - last_recovery > cfg.stale_after:
                last_recovery = time.monotonic()
                recovery.recover(host, uri, store, cfg, in_flight_after=cfg.stale_after)
        except Exception:
            log.warning("housekeeping failed", exc_info=True)


def main(host: str, uri: str, concurrency: int = 4, loglevel: str = "INFO") -> None:
    cfg = app.virt_revert_config
    logs.setup(cfg.log_format, loglevel)
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2 PID` dumps every thread's stack
    conns.on_connect(_watch_domains)
    info = host_info(host, uri)  # fails fast, with libvirt's message, when libvirtd is unreachable
    log.info("worker starting", extra={k: v for k, v in info.items() if k != "domains"})
    binding = celery_tasks.bind(host, uri)
    store = binding.store
    # Before taking any message: settle what a previous worker of this host left half-done.
    for report in recovery.recover(host, uri, store, cfg):
        log.warning("settled an interrupted revert", extra=report)
    threading.Thread(target=_heartbeat, args=(store, host, uri, cfg.heartbeat_interval, cfg.heartbeat_ttl),
                     name="heartbeat", daemon=True).start()
    threading.Thread(target=_housekeeping, args=(host, uri, store, cfg), name="housekeeping", daemon=True).start()
    try:
        app.worker_main([
            "worker", "--queues", host_queue(host), "--hostname", f"virt-revert@{host}",
            "--pool", "threads", "--concurrency", str(concurrency), "--task-events",
            "--without-gossip", "--without-mingle", "--loglevel", loglevel,
        ])
    finally:
        store.forget_host(host)  # a worker that stops says so at once; a crashed one ages out
