"""Redis keys of virt-revert: revert progress logs, host heartbeats, events.

Every key starts with `virt-revert:`.  A revert's progress is a Redis stream,
so a client can block on it (XREAD) and replay it (XRANGE) with one key.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from tasks.model import RevertRecord, fold

PREFIX = "virt-revert"
EVENTS_KEY = f"{PREFIX}:events"
HOSTS_KEY = f"{PREFIX}:hosts"  # every host ever seen: tells "unknown" from "offline"
SEEN_KEY = f"{PREFIX}:hosts:seen"  # host -> time of its last heartbeat
EVENTS_MAXLEN = 100_000

# Publish a revert's events once: a redelivered emit step finds the marker and adds nothing.
_PUBLISH_ONCE = """
if not redis.call('set', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #ARGV do
  redis.call('xadd', KEYS[2], 'MAXLEN', '~', %d, '*', 'data', ARGV[i])
end
return 1
""" % EVENTS_MAXLEN


def revert_key(revert_id: str) -> str:
    return f"{PREFIX}:revert:{revert_id}"


def heartbeat_key(host: str) -> str:
    return f"{PREFIX}:host:{host}"


class Store:
    def __init__(self, redis_url: str, record_ttl: int = 7 * 24 * 3600):
        # Ride out a Redis restart of a few seconds instead of failing the step that was writing.
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12)
        self.redis = redis.Redis.from_url(redis_url, retry=retry,
                                          retry_on_error=[RedisConnectionError, RedisTimeoutError])
        self.record_ttl = record_ttl

    # Revert progress
    def append(self, revert_id: str, entry: dict[str, Any]) -> None:
        key = revert_key(revert_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {"data": json.dumps(entry)})
        pipe.expire(key, self.record_ttl)
        pipe.execute()

    def entries(self, revert_id: str) -> list[dict[str, Any]]:
        return [json.loads(fields[b"data"]) for _id, fields in self.redis.xrange(revert_key(revert_id))]

    def exists(self, revert_id: str) -> bool:
        return bool(self.redis.exists(revert_key(revert_id)))

    def record(self, revert_id: str) -> RevertRecord:
        return fold(revert_id, self.entries(revert_id))

    def follow(self, revert_id: str, timeout: float | None) -> Iterator[dict[str, Any]]:
        """Yield every entry, past and future, until the revert finishes or `timeout` passes."""
        key = revert_key(revert_id)
        last = "0-0"
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block_ms = 1000
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                block_ms = max(1, min(block_ms, int(left * 1000)))
            reply = self.redis.xread({key: last}, block=block_ms)
            for _key, messages in reply or ():
                for message_id, fields in messages:
                    last = message_id
                    entry = json.loads(fields[b"data"])
                    yield entry
                    if entry.get("type") == "finished":
                        return

    # Hosts
    def heartbeat(self, host: str, info: dict[str, Any], ttl: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(heartbeat_key(host), json.dumps(info), ex=ttl)
        pipe.sadd(HOSTS_KEY, host)
        pipe.hset(SEEN_KEY, host, time.time())
        pipe.execute()

    def forget_host(self, host: str) -> None:
        self.redis.delete(heartbeat_key(host))

    def host_info(self, host: str) -> dict[str, Any] | None:
        raw = self.redis.get(heartbeat_key(host))
        return None if raw is None else json.loads(raw)

    def known_hosts(self) -> set[str]:
        return {h.decode() for h in self.redis.smembers(HOSTS_KEY)}

    def lost_hosts(self, after: float) -> set[str]:
        """Hosts not heard from for `after` seconds: a late heartbeat is not a lost host."""
        now = time.time()
        return {h.decode() for h, seen in self.redis.hgetall(SEEN_KEY).items() if now - float(seen) > after}

    def live_host_names(self) -> set[str]:
        """The hosts with a live heartbeat, without fetching their inventories."""
        hosts = sorted(self.known_hosts())
        pipe = self.redis.pipeline(transaction=False)
        for host in hosts:
            pipe.exists(heartbeat_key(host))
        return {h for h, alive in zip(hosts, pipe.execute(), strict=True) if alive}

    def live_hosts(self) -> dict[str, dict[str, Any]]:
        hosts = sorted(self.known_hosts())
        values = self.redis.mget([heartbeat_key(h) for h in hosts]) if hosts else []
        return {h: json.loads(v) for h, v in zip(hosts, values, strict=True) if v is not None}

    # Events
    def publish_events_once(self, revert_id: str, events: list[dict[str, Any]]) -> bool:
        """Append a revert's events atomically, unless they were already; True when appended now."""
        marker = f"{PREFIX}:revert:{revert_id}:events-published"
        return bool(self.redis.eval(_PUBLISH_ONCE, 2, marker, EVENTS_KEY, self.record_ttl,
                                    *[json.dumps(e) for e in events]))

    def events(self, count: int = 100) -> list[dict[str, Any]]:
        return [json.loads(f[b"data"]) for _id, f in reversed(self.redis.xrevrange(EVENTS_KEY, count=count))]
