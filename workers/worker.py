"""Worker entry point: one Celery worker bound to one host's libvirtd, consuming only `host.<name>`.

Threads, not processes: steps spend their time waiting on libvirtd and
qemu-img, and one libvirt connection serves all of them.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from tasks.app import app, host_queue
from tasks.store import Store
from workers import celery_tasks, logs
from workers import conn as conns

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
    }


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _heartbeat(store: Store, host: str, uri: str, interval: float, ttl: int) -> None:
    while True:
        try:
            store.heartbeat(host, host_info(host, uri), ttl)
        except Exception:  # libvirtd or Redis down: stop announcing, so clients see the host offline
            log.warning("heartbeat failed", exc_info=True, extra={"host": host})
        time.sleep(interval)


def main(host: str, uri: str, concurrency: int = 4, loglevel: str = "INFO") -> None:
    cfg = app.virt_revert_config
    logs.setup(cfg.log_format, loglevel)
    info = host_info(host, uri)  # fails fast, with libvirt's message, when libvirtd is unreachable
    log.info("worker starting", extra=info)
    celery_tasks.bind(host, uri)
    store = Store(cfg.redis_url, cfg.record_ttl)
    threading.Thread(target=_heartbeat, args=(store, host, uri, cfg.heartbeat_interval, cfg.heartbeat_ttl),
                     name="heartbeat", daemon=True).start()
    app.worker_main([
        "worker", "--queues", host_queue(host), "--hostname", f"virt-revert@{host}",
        "--pool", "threads", "--concurrency", str(concurrency), "--task-events",
        "--without-gossip", "--without-mingle", "--loglevel", loglevel,
    ])
