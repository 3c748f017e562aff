"""One libvirt connection per worker process, and libvirt errors mapped to codes in one place.

The default event loop is registered before the connection opens and runs
on a named daemon thread; keepalive and a close callback make a dead
libvirtd noticed, and the next step reconnects.
"""
from __future__ import annotations

import logging
import threading

import libvirt

from tasks.errors import ErrorCode, Refusal, RevertError, StepFailure

log = logging.getLogger(__name__)

_lock = threading.Lock()
_conn: libvirt.virConnect | None = None
_loop_started = False
_on_connect: list = []  # called with each new connection, e.g. to register event callbacks


def on_connect(hook) -> None:
    """Run `hook(conn)` on every connection opened from now on (reconnections included)."""
    _on_connect.append(hook)


def _ignore_errors(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we raise and log them instead."""


def _start_event_loop() -> None:
    global _loop_started
    if _loop_started:
        return
    libvirt.registerErrorHandler(_ignore_errors, None)
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-event-loop", daemon=True).start()
    _loop_started = True


def _on_close(conn: libvirt.virConnect, reason: int, _opaque) -> None:
    """Runs on the event-loop thread: never take `_lock` here, a thread may hold it in
    `libvirt.open()`, which needs this very loop to make progress."""
    global _conn
    log.warning("libvirt connection closed", extra={"reason": reason})
    if _conn is conn:
        _conn = None


def connection(uri: str) -> libvirt.virConnect:
    """The process's connection to its host's libvirtd, reopened if it died."""
    global _conn
    with _lock:
        if _conn is not None and _conn.isAlive():
            return _conn
        _start_event_loop()
        conn = libvirt.open(uri)
        conn.setKeepAlive(5, 3)
        conn.registerCloseCallback(_on_close, None)
        for hook in _on_connect:
            hook(conn)
        _conn = conn
        return conn


def reset() -> None:
    """Forget the connection: the next `connection()` opens a new one."""
    global _conn
    with _lock:
        _conn = None


def is_connection_error(err: BaseException) -> bool:
    """The connection broke (libvirtd restarted or died), as opposed to a call that failed."""
    return isinstance(err, libvirt.libvirtError) and err.get_error_domain() in (
        libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)


def find_domain(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    """The domain, or None when libvirt has no such domain (a stopped transient one, say)."""
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def find_snapshot(dom: libvirt.virDomain | None, name: str | None) -> libvirt.virDomainSnapshot | None:
    """The snapshot, or None when the domain or the name is absent."""
    if dom is None or not name:
        return None
    try:
        return dom.snapshotLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def lookup_domain(conn: libvirt.virConnect, name_or_uuid: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name_or_uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    try:
        return conn.lookupByUUIDString(name_or_uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
            raise
    raise Refusal(ErrorCode.DOMAIN_NOT_FOUND, f"domain '{name_or_uuid}' is not defined on this host")


def lookup_snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    try:
        return dom.snapshotCurrent() if name == "current" else dom.snapshotLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise
    what = "has no current snapshot" if name == "current" else f"has no snapshot '{name}'"
    raise Refusal(ErrorCode.SNAPSHOT_NOT_FOUND, f"domain '{dom.name()}' {what}")


def as_revert_error(err: BaseException, where: str, step: str) -> RevertError:
    """Map anything a step raised to a RevertError; known codes pass through."""
    if isinstance(err, RevertError):
        return err
    if isinstance(err, libvirt.libvirtError):
        return StepFailure(ErrorCode.LIBVIRT_ERROR, f"{where}: step {step}: {err.get_error_message()}")
    if isinstance(err, OSError):
        return StepFailure(ErrorCode.IO_ERROR, f"{where}: step {step}: {err}")
    return StepFailure(ErrorCode.INTERNAL_ERROR, f"{where}: step {step}: {type(err).__name__}: {err}")
