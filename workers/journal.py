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

    def apply(self, entry: dict[str, Any]) -> None:
        """Fold one more entry in: a step keeps its state current without re-reading the file."""
        kind = entry["type"]
        if kind == "begin":
            self.begun = True
            self.request, self.plan, self.pre = entry["request"], entry["plan"], entry["pre"]
            self.snapshot_xml, self.lock = entry["snapshot_xml"], entry.get("lock", {})
        elif kind == "step":
            if entry["status"] == "started":
                self.starts[entry["step"]] += 1
            else:
                self.ended_steps[entry["step"]] = entry.get("detail", {})
        elif kind == "intent":
            self.intents.append((entry["action"], entry.get("path")))
        elif kind == "done":
            self.done.append((entry["action"], entry.get("path")))
        elif kind == "memory":
            self.restore_xml = entry["restore_xml"]
        elif kind == "transient":
            self.transient_snapshots = entry["snapshots"]
        elif kind == "end":
            self.outcome = entry["outcome"]

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

    @property
    def marker(self) -> Path:
        """Present while the revert is unfinished, so recovery and validate scan only those."""
        return self.directory / "active" / self.revert_id

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one entry and fsync it (and the directories, when it opens or ends the journal)
        before returning it."""
        entry = {"type": kind, "at": time.time(), **fields}
        self.marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            first = os.fstat(fd).st_size == 0
            if first:
                self.marker.touch()
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if kind == "end":
            self.marker.unlink(missing_ok=True)
        if first or kind == "end":
            for directory in (self.directory, self.marker.parent):
                _fsync_dir(directory)
        return entry

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
        state.apply(entry)
    return state


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unfinished(state_dir: str | os.PathLike) -> list[Journal]:
    """Journals on this host whose revert has no end: what recovery must settle.

    Reads only the journals marked active, not every journal the host ever wrote."""
    active = Path(state_dir) / "journal" / "active"
    if not active.is_dir():
        return []
    journals = []
    for marker in sorted(active.iterdir()):
        journal = Journal(state_dir, marker.name)
        if journal.state().outcome is None:
            journals.append(journal)
        else:  # a crash between writing "end" and removing the marker
            marker.unlink(missing_ok=True)
    return journals
