"""The host-local journal of a revert: the source of truth for recovery.

One file per revert, `<state_dir>/journal/<revert id>.jsonl`: append-only
JSON lines, each fsynced before the side effect it announces.  It does not
depend on Redis, so a revert can be finished or undone after a worker,
libvirtd or Redis crash.  An exclusive flock on the file serialises every
delivery of every step of the revert on this host.

Entries (all with "type" and "at"):
  begin      request, plan, pre-revert state (definitions, state, current
             snapshot, a transient domain's snapshot metadata), snapshot XML,
             lock owner
  step       step, status started|ended, detail
  intent     action (safety-snapshot, destroy, create, restore), path
  done       action, path          the side effect announced by `intent` happened
  memory     restore_xml           built by open_memory_image
  transient  snapshots             a transient domain's metadata after the safety snapshot
  end        outcome succeeded|refused|rolled-back|rolled-forward|rollback-failed|abandoned, detail
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

OUTCOME_SUCCEEDED = "succeeded"
OUTCOME_REFUSED = "refused"
OUTCOME_ROLLED_BACK = "rolled-back"
OUTCOME_ROLLED_FORWARD = "rolled-forward"
OUTCOME_ROLLBACK_FAILED = "rollback-failed"
OUTCOME_ABANDONED = "abandoned"  # stopped before it changed anything


@dataclass
class JournalState:
    """A journal folded: what a revert decided and has done so far."""

    revert_id: str
    begun: bool = False
    request: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    pre: dict[str, Any] = field(default_factory=dict)
    snapshot_xml: str = ""
    lock: dict[str, Any] = field(default_factory=dict)
    restore_xml: str | None = None
    transient_snapshots: list[str] | None = None
    intents: list[tuple[str, str | None]] = field(default_factory=list)
    done: list[tuple[str, str | None]] = field(default_factory=list)
    ended_steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)
    outcome: str | None = None

    def intended(self, action: str, path: str | None = None) -> bool:
        return (action, path) in self.intents

    def did(self, action: str, path: str | None = None) -> bool:
        return (action, path) in self.done

    @property
    def claimed_files(self) -> list[str]:
        """New overlays this revert created (claimed with O_EXCL): only these, and the safety
        snapshot's files, may ever be removed by it."""
        return [path for action, path in self.done if action == "claim" and path]

    @property
    def restored(self) -> bool:
        """Past the point of no return: the domain runs (or is defined) on the target."""
        return self.did("restore")


class Journal:
    def __init__(self, state_dir: str | os.PathLike, revert_id: str):
        self.directory = Path(state_dir) / "journal"
        self.revert_id = revert_id
        self.path = self.directory / f"{revert_id}.jsonl"

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def append(self, kind: str, **fields: Any) -> None:
        """Write one entry and fsync it (and, for a new file, its directory) before returning."""
        new = not self.path.exists()
        if new:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps({"type": kind, "at": time.time(), **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        with open(self.path) as fh:
            for line in fh:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a crash mid-write: everything before it stands
        return entries

    def state(self) -> JournalState:
        return fold(self.revert_id, self.entries())

    @contextmanager
    def locked(self, blocking: bool = True) -> Iterator["Journal"]:
        """Hold the revert's host-wide mutex (an flock on the journal itself): one delivery of one
        step, or recovery, at a time.  Non-blocking, raises BlockingIOError when a step runs now."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            yield self
        finally:
            os.close(fd)


def fold(revert_id: str, entries: list[dict[str, Any]]) -> JournalState:
    state = JournalState(revert_id)
    for entry in entries:
        kind = entry["type"]
        if kind == "begin":
            state.begun = True
            state.request, state.plan, state.pre = entry["request"], entry["plan"], entry["pre"]
            state.snapshot_xml, state.lock = entry["snapshot_xml"], entry.get("lock", {})
        elif kind == "step":
            if entry["status"] == "started":
                state.starts[entry["step"]] += 1
            else:
                state.ended_steps[entry["step"]] = entry.get("detail", {})
        elif kind == "intent":
            state.intents.append((entry["action"], entry.get("path")))
        elif kind == "done":
            state.done.append((entry["action"], entry.get("path")))
        elif kind == "memory":
            state.restore_xml = entry["restore_xml"]
        elif kind == "transient":
            state.transient_snapshots = entry["snapshots"]
        elif kind == "end":
            state.outcome = entry["outcome"]
    return state


def unfinished(state_dir: str | os.PathLike) -> list[Journal]:
    """Journals on this host whose revert has no end: what recovery must settle."""
    directory = Path(state_dir) / "journal"
    if not directory.is_dir():
        return []
    journals = [Journal(state_dir, p.stem) for p in sorted(directory.glob("*.jsonl"))]
    return [j for j in journals if j.state().outcome is None]
