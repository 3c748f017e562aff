"""Typed requests and records, and how a record is folded from its progress log.

A revert's progress is an append-only log in Redis (one entry per step
transition, written by the host).  The record the CLI and API show is a pure
fold over that log, so there is no read-modify-write and no second copy.
"""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Iterable

STEPS: tuple[str, ...] = (
    "validate",
    "open_memory_image",
    "stop",
    "recreate_overlays",
    "restore",
    "resume",
    "emit_events",
)


class EndState(StrEnum):
    """libvirt's names for the states a revert can leave a domain in."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"


class RevertState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REFUSED = "refused"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (RevertState.SUCCEEDED, RevertState.REFUSED, RevertState.FAILED)


class StepStatus(StrEnum):
    PENDING = "pending"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    REFUSED = "refused"
    FAILED = "failed"


def new_revert_id() -> str:
    """Short enough to read in `virsh snapshot-list`, long enough never to collide on a host."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class RevertRequest:
    domain: str
    snapshot: str
    host: str
    revert_id: str = field(default_factory=new_revert_id)
    end_state: str | None = None  # "running" | "paused" | "stopped" | None: the snapshot's own
    allow_respawn: bool = False
    force: bool = False
    cold_boot: bool = False
    safety_snapshot: bool = True
    safety_memory: bool = False
    batch_id: str | None = None  # set when the revert is an item of a batch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RevertRequest":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def safety_snapshot_name(self) -> str:
        return f"virt-revert-pre-{self.revert_id}"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")


@dataclass
class StepRecord:
    name: str
    status: StepStatus = StepStatus.PENDING
    started: float | None = None
    finished: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    def to_dict(self) -> dict[str, Any]:
        duration = self.duration
        return {
            "name": self.name,
            "status": str(self.status),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "duration_ms": None if duration is None else round(duration * 1000, 3),
            "detail": self.detail,
        }


@dataclass
class RevertRecord:
    revert_id: str
    domain: str = ""
    snapshot: str = ""
    host: str = ""
    state: RevertState = RevertState.PENDING
    end_state: str | None = None
    steps: list[StepRecord] = field(default_factory=lambda: [StepRecord(n) for n in STEPS])
    created_files: list[str] = field(default_factory=list)
    safety_snapshot: str | None = None
    error: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None  # how a failed or interrupted revert was settled
    requested: float | None = None
    finished: float | None = None

    def step(self, name: str) -> StepRecord:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revert_id": self.revert_id,
            "domain": self.domain,
            "snapshot": self.snapshot,
            "host": self.host,
            "state": str(self.state),
            "end_state": self.end_state,
            "steps": [s.to_dict() for s in self.steps],
            "created_files": list(self.created_files),
            "safety_snapshot": self.safety_snapshot,
            "error": self.error,
            "recovery": self.recovery,
            "requested": iso(self.requested),
            "finished": iso(self.finished),
        }


# Progress log entries.  Each is a flat JSON object with a "type".
def requested_entry(request: RevertRequest, at: float) -> dict[str, Any]:
    return {"type": "requested", "request": request.to_dict(), "at": at}


def step_entry(step: str, status: StepStatus, at: float, **detail: Any) -> dict[str, Any]:
    return {"type": "step", "step": step, "status": str(status), "at": at, "detail": detail}


def finished_entry(
    state: RevertState,
    at: float,
    *,
    end_state: str | None = None,
    created_files: Iterable[str] = (),
    safety_snapshot: str | None = None,
    error: dict[str, Any] | None = None,
    recovery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "type": "finished",
        "recovery": recovery,
        "state": str(state),
        "at": at,
        "end_state": end_state,
        "created_files": list(created_files),
        "safety_snapshot": safety_snapshot,
        "error": error,
    }


def fold(revert_id: str, entries: Iterable[dict[str, Any]]) -> RevertRecord:
    """Build the record from the progress log, in order."""
    record = RevertRecord(revert_id)
    for entry in entries:
        kind = entry.get("type")
        if kind == "requested":
            request = entry["request"]
            record.domain, record.snapshot, record.host = (
                request["domain"], request["snapshot"], request["host"])
            record.requested = entry["at"]
        elif kind == "step":
            step = record.step(entry["step"])
            status = StepStatus(entry["status"])
            if status is StepStatus.STARTED:
                step.started = entry["at"]
            else:
                step.finished = entry["at"]
                if step.started is None:
                    step.started = entry["at"]
            step.status = status
            step.detail.update(entry.get("detail") or {})
            if record.state is RevertState.PENDING:
                record.state = RevertState.RUNNING
        elif kind == "finished":
            record.state = RevertState(entry["state"])
            record.end_state = entry.get("end_state")
            record.created_files = list(entry.get("created_files") or [])
            record.safety_snapshot = entry.get("safety_snapshot")
            record.error = entry.get("error")
            record.recovery = entry.get("recovery")
            record.finished = entry["at"]
    return record
