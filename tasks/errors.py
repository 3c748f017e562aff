"""Stable error codes, shared by the cluster side and the hosts.

Codes are kebab-case and only ever added to: scripts match on them.  A
:class:`Refusal` is raised before anything changed; a :class:`StepFailure`
after a step started doing something.
"""
from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid-request"
    HOST_UNKNOWN = "host-unknown"
    HOST_OFFLINE = "host-offline"
    DOMAIN_NOT_FOUND = "domain-not-found"
    DOMAIN_AMBIGUOUS = "domain-ambiguous"
    SNAPSHOT_NOT_FOUND = "snapshot-not-found"
    REVERT_RISKY = "revert-risky"
    MEMORY_STATE_MISSING = "memory-state-missing"
    MEMORY_IMAGE_UNKNOWN = "memory-image-unknown"
    MEMORY_IMAGE_MISSING = "memory-image-missing"
    MEMORY_IMAGE_UNREADABLE = "memory-image-unreadable"
    MEMORY_IMAGE_INVALID = "memory-image-invalid"
    MEMORY_IMAGE_MISMATCH = "memory-image-mismatch"
    SNAPSHOT_NO_DOMAIN = "snapshot-no-domain"
    BACKING_MISSING = "backing-missing"
    BACKING_UNREADABLE = "backing-unreadable"
    FILE_OUTSIDE_ROOTS = "file-outside-roots"
    INSUFFICIENT_SPACE = "insufficient-space"
    BLOCK_JOB_RUNNING = "block-job-running"
    REVERT_IN_FLIGHT = "revert-in-flight"
    SNAPSHOT_MIXED = "snapshot-mixed"
    TRANSIENT_INACTIVE = "transient-inactive"
    OVERLAY_EXISTS = "overlay-exists"
    QEMU_IMG_FAILED = "qemu-img-failed"
    LIBVIRT_ERROR = "libvirt-error"
    TIMEOUT = "timeout"
    LOCK_LOST = "lock-lost"
    WORKER_LOST = "worker-lost"
    TOO_MANY_DELIVERIES = "too-many-deliveries"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    NOT_STARTED = "not-started"


HINTS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "see `virt-revert revert --help`",
    ErrorCode.HOST_UNKNOWN: "pass --host with a host that runs a virt-revert worker (`virt-revert hosts`)",
    ErrorCode.HOST_OFFLINE: "start the host's worker: `virt-revert worker --host NAME`",
    ErrorCode.DOMAIN_NOT_FOUND: "check the name with `virsh list --all` on that host",
    ErrorCode.DOMAIN_AMBIGUOUS: "pass --host with one of the hosts listed",
    ErrorCode.SNAPSHOT_NOT_FOUND: "list snapshots with `virsh snapshot-list DOMAIN`",
    ErrorCode.REVERT_RISKY: "pass --allow-respawn to replace the running QEMU process",
    ErrorCode.MEMORY_STATE_MISSING: "pass --cold-boot to boot from the reverted disks, or --stopped",
    ErrorCode.MEMORY_IMAGE_UNKNOWN: "revert with --stopped, or --cold-boot to boot from the disks",
    ErrorCode.MEMORY_IMAGE_MISSING: "restore the memory file, or revert with --stopped / --cold-boot",
    ErrorCode.MEMORY_IMAGE_UNREADABLE: "check the file's permissions, or revert with --stopped / --cold-boot",
    ErrorCode.MEMORY_IMAGE_INVALID: "the file is not a libvirt save image; revert with --stopped / --cold-boot",
    ErrorCode.MEMORY_IMAGE_MISMATCH: "the memory file belongs to another domain; fix the snapshot metadata",
    ErrorCode.SNAPSHOT_NO_DOMAIN: "pass --force to use the domain's current definition",
    ErrorCode.BACKING_MISSING: "restore the file; the snapshot cannot be reverted without it",
    ErrorCode.BACKING_UNREADABLE: "check the file's permissions",
    ErrorCode.FILE_OUTSIDE_ROOTS: "add its directory to VIRT_REVERT_STORAGE_ROOTS (storage_roots in the config)",
    ErrorCode.INSUFFICIENT_SPACE: "free space on that storage root, or revert without --safety-memory",
    ErrorCode.BLOCK_JOB_RUNNING: "wait for the job (`virsh blockjob DOMAIN DISK --info`) or abort it",
    ErrorCode.REVERT_IN_FLIGHT: "wait for that revert: `virt-revert status ID`",
    ErrorCode.SNAPSHOT_MIXED: "a snapshot mixing internal and external disks cannot be reverted safely",
    ErrorCode.TRANSIENT_INACTIVE: "pass --running or --paused: a stopped transient domain would vanish",
    ErrorCode.OVERLAY_EXISTS: "retry: a new revert id gives a new path",
    ErrorCode.QEMU_IMG_FAILED: "see the worker log for qemu-img's output",
    ErrorCode.LIBVIRT_ERROR: "see the worker log and /var/log/libvirt/libvirtd.log",
    ErrorCode.TIMEOUT: "the revert goes on; follow it with `virt-revert status ID`",
    ErrorCode.LOCK_LOST: "another revert took the domain over; see `virt-revert status` of both",
    ErrorCode.WORKER_LOST: "the host's worker stopped mid-revert; its recovery settled the revert as recorded",
    ErrorCode.TOO_MANY_DELIVERIES: "a step kept failing its worker; see the worker log",
    ErrorCode.INTERNAL_ERROR: "a bug: please report it with the worker log",
    ErrorCode.NOT_STARTED: "the batch was cancelled, stopped on an error, or the host went offline",
    ErrorCode.IO_ERROR: "check the storage (space, permissions) named in the message",
}


class RevertError(Exception):
    """A revert stopped for a known reason, with a code, a sentence and a hint.

    The arguments are plain strings so Celery's JSON serialiser carries the
    exception to the client intact.
    """

    def __init__(self, code: str, message: str, hint: str | None = None):
        code = ErrorCode(code)
        hint = HINTS.get(code) if hint is None else hint
        super().__init__(str(code), message, hint)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, str | None]:
        return {"code": str(self.code), "message": self.message, "hint": self.hint}


class Refusal(RevertError):
    """Raised before anything changed: the request is refused as a whole."""


class StepFailure(RevertError):
    """Raised by a step that had started changing things."""
