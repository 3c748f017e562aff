"""Batch rollbacks: many reverts under per-host and total concurrency limits, no chord.

A batch lives in Redis, not in the client: its items (domain, host, revert
id) and a pending list; a Lua script (`advance`) atomically moves pending
items to in flight while the limits allow, and whoever sees a revert of the
batch end (its worker, or an attached client) calls `item_finished` then
`advance` and sends the chains of what was started.  So the batch goes on
when the client disconnects; `attach` follows it again; `cancel` stops
anything pending from starting while reverts in flight finish (or roll back).
"""
from __future__ import annotations

import fnmatch
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from celery import Celery

from tasks.canvas import revert_chain
from tasks.errors import ErrorCode, Refusal
from tasks.model import RevertRequest, RevertState, finished_entry, requested_entry
from tasks.store import PREFIX, Store

_ADVANCE = """
if redis.call('exists', KEYS[4]) == 1 then return {} end
local max_host, max_total = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = redis.call('scard', KEYS[3])
local started = {}
for _, entry in ipairs(redis.call('lrange', KEYS[1], 0, -1)) do
  if max_total > 0 and total >= max_total then break end
  local sep = string.find(entry, '|', 1, true)
  local host = string.sub(entry, sep + 1)
  if max_host <= 0 or tonumber(redis.call('hget', KEYS[2], host) or '0') < max_host then
    redis.call('lrem', KEYS[1], 1, entry)
    redis.call('hincrby', KEYS[2], host, 1)
    redis.call('sadd', KEYS[3], string.sub(entry, 1, sep - 1))
    total = total + 1
    table.insert(started, entry)
  end
end
return started
"""

_FINISHED = """
if redis.call('srem', KEYS[1], ARGV[1]) == 1 then
  redis.call('hincrby', KEYS[2], ARGV[2], -1)
  return 1
end
return 0
"""


FINAL_STATES = ("succeeded", "failed", "refused", "not-started")


def batch_key(batch_id: str, part: str = "") -> str:
    return f"{PREFIX}:batch:{batch_id}" + (f":{part}" if part else "")


def new_batch_id() -> str:
    return "b" + uuid.uuid4().hex[:11]


@dataclass(frozen=True)
class BatchItem:
    domain: str
    host: str
    revert_id: str
    refusal: dict[str, Any] | None = None  # refused before dispatch (e.g. the snapshot is missing)


@dataclass(frozen=True)
class BatchSpec:
    batch_id: str
    snapshot: str
    items: tuple[BatchItem, ...]
    flags: dict[str, Any] = field(default_factory=dict)  # end_state, allow_respawn, ... as for revert()
    max_per_host: int = 0  # 0: no limit
    max_total: int = 0
    stop_on_error: bool = False
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "BatchSpec":
        data = json.loads(raw)
        data["items"] = tuple(BatchItem(**item) for item in data["items"])
        return cls(**data)

    def request(self, item: BatchItem) -> RevertRequest:
        return RevertRequest(domain=item.domain, snapshot=self.snapshot, host=item.host,
                             revert_id=item.revert_id, batch_id=self.batch_id, **self.flags)


def select(inventory: Iterable[dict[str, Any]], patterns: Iterable[str] = (),
           names: Iterable[str] = (), hosts: Iterable[str] = ()) -> list[BatchItem]:
    """The batch's items from the inventory: domains matching a glob or named, on the given hosts.

    A named domain on no host, or on several hosts, stays in the batch as a refusal, so the plan
    and the summary say why it was not reverted; everything else is validated on its host.
    """
    patterns, names, hosts = list(patterns), list(names), set(hosts)
    rows = [r for r in inventory if not hosts or r["host"] in hosts]
    items: list[BatchItem] = []
    matched: set[str] = set()
    for row in sorted(rows, key=lambda r: (r["host"], r["name"])):
        if not (any(fnmatch.fnmatchcase(row["name"], p) for p in patterns) or row["name"] in names):
            continue
        matched.add(row["name"])
        # Whether it has the snapshot is the host's to say (validate): the inventory may lag behind.
        items.append(BatchItem(row["name"], row["host"], uuid.uuid4().hex[:12]))
    for name in names:
        if name not in matched:
            items.append(BatchItem(name, "", uuid.uuid4().hex[:12], Refusal(
                ErrorCode.DOMAIN_NOT_FOUND, f"domain '{name}' is on no selected live host").to_dict()))
    seen: dict[str, list[BatchItem]] = {}
    for item in items:
        seen.setdefault(item.domain, []).append(item)
    ambiguous = {d for d, found in seen.items() if len(found) > 1 and all(i.host for i in found)}
    return [item if item.domain not in ambiguous else BatchItem(
        item.domain, item.host, item.revert_id, Refusal(
            ErrorCode.DOMAIN_AMBIGUOUS, f"domain '{item.domain}' is on several hosts: "
                                        f"{', '.join(sorted(i.host for i in seen[item.domain]))}").to_dict())
            for item in items]


class Batches:
    """Batch operations over one Redis store and Celery app (clients and workers alike)."""

    def __init__(self, store: Store, app: Celery, host_lost_after: float = 90.0):
        self.store, self.app, self.host_lost_after = store, app, host_lost_after

    def create(self, spec: BatchSpec) -> None:
        """Record the batch and each item's revert as requested (or refused), then start what the limits allow."""
        redis, now = self.store.redis, time.time()
        pipe = redis.pipeline()
        pipe.set(batch_key(spec.batch_id), spec.to_json(), ex=self.store.record_ttl)
        for item in spec.items:
            if item.refusal is None:
                pipe.rpush(batch_key(spec.batch_id, "pending"), f"{item.revert_id}|{item.host}")
        pipe.expire(batch_key(spec.batch_id, "pending"), self.store.record_ttl)
        pipe.execute()
        for item in spec.items:
            self.store.append(item.revert_id, requested_entry(spec.request(item), now))
            if item.refusal is not None:
                self.store.append(item.revert_id, finished_entry(RevertState.REFUSED, now, error=item.refusal))
        self.advance(spec.batch_id)

    def spec(self, batch_id: str) -> BatchSpec | None:
        raw = self.store.redis.get(batch_key(batch_id))
        return None if raw is None else BatchSpec.from_json(raw)

    def advance(self, batch_id: str, spec: BatchSpec | None = None) -> list[str]:
        """Settle items whose host went offline, then start pending items within the limits."""
        spec = spec or self.spec(batch_id)
        if spec is None:
            return []
        self._settle_lost_hosts(spec)
        keys = [batch_key(batch_id, p) for p in ("pending", "inflight", "running", "halted")]
        started = self.store.redis.eval(_ADVANCE, 4, *keys, spec.max_per_host, spec.max_total)
        by_id = {item.revert_id: item for item in spec.items}
        ids = []
        for entry in started:
            revert_id = entry.decode().split("|", 1)[0]
            revert_chain(self.app, spec.request(by_id[revert_id])).apply_async()
            ids.append(revert_id)
        return ids

    def item_ended(self, batch_id: str, revert_id: str, host: str, state: RevertState) -> None:
        """A revert of the batch settled (seen by its worker): count it, then start what may start."""
        spec = self.spec(batch_id)
        self.item_finished(batch_id, revert_id, host, state, spec)
        self.advance(batch_id, spec)

    def item_finished(self, batch_id: str, revert_id: str, host: str, state: RevertState,
                      spec: BatchSpec | None = None) -> bool:
        """Count a revert of the batch as ended (once); stop the batch on error if asked."""
        spec = spec or self.spec(batch_id)
        counted = bool(self.store.redis.eval(_FINISHED, 2, batch_key(batch_id, "running"),
                                             batch_key(batch_id, "inflight"), revert_id, host))
        if counted and spec and spec.stop_on_error and state is not RevertState.SUCCEEDED:
            self._halt(batch_id, "stopped on error")
        return counted

    def cancel(self, batch_id: str) -> None:
        self._halt(batch_id, "cancelled")

    def _halt(self, batch_id: str, why: str) -> None:
        """Nothing pending starts any more; each is recorded as not started, with why."""
        redis = self.store.redis
        redis.set(batch_key(batch_id, "halted"), why, ex=self.store.record_ttl)
        now = time.time()
        while (entry := redis.lpop(batch_key(batch_id, "pending"))) is not None:
            revert_id = entry.decode().split("|", 1)[0]
            self.store.append(revert_id, finished_entry(RevertState.REFUSED, now, error=Refusal(
                ErrorCode.NOT_STARTED, f"revert {revert_id} was not started: batch {batch_id} {why}").to_dict()))

    def _settle_lost_hosts(self, spec: BatchSpec) -> None:
        """Items on a host not heard from for `host_lost_after` s: in flight -> failed, pending -> not started."""
        lost = self.store.lost_hosts(self.host_lost_after)
        if not lost & {item.host for item in spec.items}:
            return
        redis, now = self.store.redis, time.time()
        by_id = {item.revert_id: item for item in spec.items}
        for raw in redis.smembers(batch_key(spec.batch_id, "running")):
            item = by_id[raw.decode()]
            if item.host not in lost or self.store.record(item.revert_id).state.finished:
                continue
            if self.item_finished(spec.batch_id, item.revert_id, item.host, RevertState.FAILED, spec):
                self.store.append(item.revert_id, finished_entry(RevertState.FAILED, now, error=Refusal(
                    ErrorCode.HOST_OFFLINE, f"the worker of host '{item.host}' stopped during revert "
                                            f"{item.revert_id}; its recovery settles the domain when it restarts"
                ).to_dict()))
        for entry in redis.lrange(batch_key(spec.batch_id, "pending"), 0, -1):
            revert_id, host = entry.decode().split("|", 1)
            if host in lost and redis.lrem(batch_key(spec.batch_id, "pending"), 1, entry):
                self.store.append(revert_id, finished_entry(RevertState.REFUSED, now, error=Refusal(
                    ErrorCode.NOT_STARTED, f"revert {revert_id} was not started: host '{host}' is offline"
                ).to_dict()))

    def record(self, batch_id: str) -> dict[str, Any] | None:
        """The batch as the CLI and API show it: each item with its revert's outcome, counts per host."""
        spec = self.spec(batch_id)
        if spec is None:
            return None
        items = []
        for item in spec.items:
            revert = self.store.record(item.revert_id)
            not_started = revert.error is not None and revert.error.get("code") == ErrorCode.NOT_STARTED
            items.append({"domain": item.domain, "host": item.host, "revert_id": item.revert_id,
                          "state": "not-started" if not_started else str(revert.state),
                          "end_state": revert.end_state, "error": revert.error,
                          "started": revert.steps[0].started, "finished": revert.finished})
        hosts: dict[str, dict[str, int]] = {}
        for item in items:
            counts = hosts.setdefault(item["host"] or "-", {})
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        states = [i["state"] for i in items]
        halted = self.store.redis.get(batch_key(batch_id, "halted"))
        return {"batch_id": batch_id, "snapshot": spec.snapshot, "created": spec.created,
                "max_per_host": spec.max_per_host, "max_total": spec.max_total,
                "halted": halted.decode() if halted else None,
                "finished": all(s in FINAL_STATES for s in states),
                "counts": {s: states.count(s) for s in sorted(set(states))}, "hosts": hosts, "items": items}
