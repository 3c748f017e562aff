"""One revert per domain in the whole cluster: a Redis lock per domain UUID.

The value is the owning revert id: a refusal names the revert in flight,
only the owner renews or releases, and a step about to destroy or restore
checks it still owns the lock (fencing) before acting.  The TTL frees the
lock of a revert whose worker vanished; the worker renews it meanwhile.
"""
from __future__ import annotations

import redis

from tasks.store import PREFIX

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""


def lock_key(domain_uuid: str) -> str:
    return f"{PREFIX}:lock:domain:{domain_uuid}"


def acquire(client: redis.Redis, domain_uuid: str, revert_id: str, ttl: int) -> str | None:
    """Take the lock for `revert_id`; return None on success, else the id of the revert holding it.

    Taking a lock this revert already holds succeeds: a redelivered step must not refuse itself.
    """
    key = lock_key(domain_uuid)
    if client.set(key, revert_id, nx=True, ex=ttl):
        return None
    holder = client.get(key)
    if holder is None:  # expired between the two calls
        return acquire(client, domain_uuid, revert_id, ttl)
    holder = holder.decode()
    return None if holder == revert_id else holder


def owns(client: redis.Redis, domain_uuid: str, revert_id: str) -> bool:
    holder = client.get(lock_key(domain_uuid))
    return holder is not None and holder.decode() == revert_id


def renew(client: redis.Redis, domain_uuid: str, revert_id: str, ttl: int) -> bool:
    return bool(client.eval(_RENEW, 1, lock_key(domain_uuid), revert_id, ttl))


def release(client: redis.Redis, domain_uuid: str, revert_id: str) -> bool:
    return bool(client.eval(_RELEASE, 1, lock_key(domain_uuid), revert_id))
