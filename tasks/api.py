"""Python API: revert a domain and follow it.

    from tasks.api import revert
    handle = revert("web1", "golden", host="hv3", allow_respawn=True)
    record = handle.wait(timeout=300)   # same fields as `virt-revert revert --json`

Refusals the client can decide alone (bad request, unknown or offline host)
are recorded like any other outcome, so `status` and `wait` see them too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Iterator

from celery import Celery

from tasks import config as config_mod
from tasks.canvas import revert_chain
from tasks.errors import ErrorCode, Refusal
from tasks.model import RevertRecord, RevertRequest, RevertState, finished_entry, fold, requested_entry
from tasks.store import Store

END_STATES = ("running", "paused", "stopped")


@dataclass
class Cluster:
    """Where the cluster lives: its configuration, Celery app and Redis store."""

    config: config_mod.Config

    @cached_property
    def app(self) -> Celery:
        from tasks.app import make_app

        return make_app(self.config)

    @cached_property
    def store(self) -> Store:
        return Store(self.config.redis_url, self.config.record_ttl)

    def resolve_host(self, host: str | None, domain: str | None = None) -> str:
        """The host to send to: `host` if it is live; else the one live host whose inventory has
        `domain` (name or UUID).  Otherwise a refusal naming the candidates."""
        live = self.store.live_hosts()
        if host:
            if host in live:
                return host
            if host in self.store.known_hosts():
                raise Refusal(ErrorCode.HOST_OFFLINE, f"host '{host}' has no live worker "
                                                      f"(no heartbeat for {self.config.heartbeat_ttl} s)")
            raise Refusal(ErrorCode.HOST_UNKNOWN, f"host '{host}' is unknown; live hosts: "
                                                  f"{', '.join(sorted(live)) or 'none'}")
        if domain is None:
            if len(live) == 1:
                return next(iter(live))
            raise Refusal(ErrorCode.HOST_UNKNOWN, f"no --host given and {len(live)} hosts are live: "
                                                  f"{', '.join(sorted(live)) or 'none'}")
        holders = sorted(name for name, info in live.items()
                         if any(domain in (d["name"], d["uuid"]) for d in info.get("domains", ())))
        if len(holders) == 1:
            return holders[0]
        if holders:
            raise Refusal(ErrorCode.DOMAIN_AMBIGUOUS, f"domain '{domain}' is on several hosts: "
                                                      f"{', '.join(holders)}; pass --host")
        raise Refusal(ErrorCode.DOMAIN_NOT_FOUND, f"domain '{domain}' is on no live host "
                                                  f"(live: {', '.join(sorted(live)) or 'none'})")

    def inventory(self, host: str | None = None, snapshot: str | None = None) -> list[dict[str, Any]]:
        """One row per domain on the live hosts (or one host), optionally only those having `snapshot`."""
        rows = []
        for name, info in sorted(self.store.live_hosts().items()):
            if host and name != host:
                continue
            for dom in info.get("domains", ()):
                if snapshot and not any(s["name"] == snapshot for s in dom["snapshots"]):
                    continue
                rows.append({"host": name, **dom})
        return rows


_default_cluster: Cluster | None = None


def default_cluster() -> Cluster:
    """The cluster described by the environment and config file, built once per process."""
    global _default_cluster
    if _default_cluster is None:
        _default_cluster = Cluster(config_mod.load())
    return _default_cluster


class RevertHandle:
    """A revert in flight or finished; cheap to create from an id."""

    def __init__(self, revert_id: str, cluster: Cluster | None = None):
        self.id = revert_id
        self.cluster = cluster or default_cluster()

    def __repr__(self) -> str:
        return f"<RevertHandle {self.id}>"

    def record(self) -> dict[str, Any]:
        return self.cluster.store.record(self.id).to_dict()

    def follow(self, timeout: float | None = None) -> Iterator[RevertRecord]:
        """Yield the record after every change, until it finishes or `timeout` passes."""
        entries: list[dict[str, Any]] = []
        for entry in self.cluster.store.follow(self.id, timeout):
            entries.append(entry)
            yield fold(self.id, entries)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the revert finishes; TimeoutError if it has not within `timeout` seconds."""
        for record in self.follow(timeout):
            if record.state.finished:
                return record.to_dict()
        raise TimeoutError(f"revert {self.id} not finished after {timeout} s; "
                           f"follow it with `virt-revert status {self.id}`")


def revert(domain: str, snapshot: str, host: str | None = None, *, end_state: str | None = None,
           allow_respawn: bool = False, force: bool = False, cold_boot: bool = False,
           safety_snapshot: bool = True, safety_memory: bool = False,
           cluster: Cluster | None = None) -> RevertHandle:
    """Send a revert to the domain's host and return at once with its handle."""
    cluster = cluster or default_cluster()
    request = RevertRequest(domain=domain, snapshot=snapshot, host=host or "", end_state=end_state,
                            allow_respawn=allow_respawn, force=force, cold_boot=cold_boot,
                            safety_snapshot=safety_snapshot, safety_memory=safety_memory)
    try:
        _check_request(request)
        request = RevertRequest.from_dict({**request.to_dict(), "host": cluster.resolve_host(host, domain)})
    except Refusal as refusal:
        now = time.time()
        cluster.store.append(request.revert_id, requested_entry(request, now))
        cluster.store.append(request.revert_id, finished_entry(RevertState.REFUSED, now, error=refusal.to_dict()))
        return RevertHandle(request.revert_id, cluster)
    cluster.store.append(request.revert_id, requested_entry(request, time.time()))
    revert_chain(cluster.app, request).apply_async()
    return RevertHandle(request.revert_id, cluster)


def status(revert_id: str, cluster: Cluster | None = None) -> dict[str, Any] | None:
    """The revert's record, or None when Redis holds nothing under that id."""
    cluster = cluster or default_cluster()
    if not cluster.store.exists(revert_id):
        return None
    return cluster.store.record(revert_id).to_dict()


def _check_request(request: RevertRequest) -> None:
    if not request.domain or not request.snapshot:
        raise Refusal(ErrorCode.INVALID_REQUEST, "a revert needs a domain and a snapshot name")
    if request.end_state not in (None, *END_STATES):
        raise Refusal(ErrorCode.INVALID_REQUEST, f"end state '{request.end_state}' is not one of "
                                                 f"{', '.join(END_STATES)}")


def host_call(task: str, host: str | None, *args: Any, domain: str | None = None, timeout: float = 300,
              cluster: Cluster | None = None) -> Any:
    """Run one of a host's own tasks (`virt_revert.host.*`) on its worker and return its result;
    without `host`, the host is the one holding `domain`."""
    from tasks.app import HOST_TASK_NAMESPACE, host_queue

    cluster = cluster or default_cluster()
    queue = host_queue(cluster.resolve_host(host, domain))
    return cluster.app.send_task(f"{HOST_TASK_NAMESPACE}.{task}", args=args, queue=queue).get(timeout=timeout)


def recover(host: str | None = None, *, stale_after: float | None = None, cluster: Cluster | None = None
            ) -> list[dict[str, Any]]:
    """Settle the host's unfinished reverts not touched for `stale_after` s (default: the host's setting)."""
    return host_call("recover", host, stale_after, cluster=cluster)


def prune(domain: str, host: str | None = None, *, keep: int = 1, older_than: float = 0, dry_run: bool = False,
          cluster: Cluster | None = None) -> dict[str, Any]:
    """Drop the domain's safety snapshots beyond the newest `keep` and older than `older_than` s,
    with the files nothing uses any more."""
    return host_call("prune", host, domain, keep, older_than, dry_run, domain=domain, cluster=cluster)


class BatchHandle:
    """A batch in flight or finished; `wait` and `follow` also settle items of hosts that went offline."""

    def __init__(self, batch_id: str, cluster: Cluster | None = None):
        from tasks.batch import Batches

        self.id = batch_id
        self.cluster = cluster or default_cluster()
        self.batches = Batches(self.cluster.store, self.cluster.app, self.cluster.config.host_lost_after)

    def __repr__(self) -> str:
        return f"<BatchHandle {self.id}>"

    def record(self) -> dict[str, Any] | None:
        return self.batches.record(self.id)

    def follow(self, timeout: float | None = None, interval: float = 0.5) -> Iterator[dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.batches.advance(self.id)
            record = self.record()
            yield record
            if record is None or record["finished"]:
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(interval)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        for record in self.follow(timeout):
            if record is not None and record["finished"]:
                return record
        raise TimeoutError(f"batch {self.id} not finished after {timeout} s; `virt-revert batch --attach {self.id}`")

    def cancel(self) -> None:
        self.batches.cancel(self.id)


def select_batch(snapshot: str, patterns: Iterable[str] = (), domains: Iterable[str] = (),
                 hosts: Iterable[str] = (), cluster: Cluster | None = None) -> list:
    """The batch's items from the live inventory (see tasks.batch.select)."""
    from tasks.batch import select

    cluster = cluster or default_cluster()
    return select(cluster.inventory(), patterns, domains, hosts)


def plan_batch(snapshot: str, patterns: Iterable[str] = (), domains: Iterable[str] = (),
               hosts: Iterable[str] = (), *, cluster: Cluster | None = None, timeout: float = 120,
               **flags: Any) -> list[dict[str, Any]]:
    """--dry-run: each item validated on its host, in parallel; nothing changes anywhere."""
    from tasks.app import HOST_TASK_NAMESPACE, host_queue

    cluster = cluster or default_cluster()
    items = select_batch(snapshot, patterns, domains, hosts, cluster)
    pending = []
    for item in items:
        if item.refusal is None:
            request = RevertRequest(domain=item.domain, snapshot=snapshot, host=item.host, **flags)
            pending.append((item, cluster.app.send_task(f"{HOST_TASK_NAMESPACE}.plan", args=(request.to_dict(),),
                                                        queue=host_queue(item.host))))
        else:
            pending.append((item, None))
    rows = []
    for item, result in pending:
        row = result.get(timeout=timeout) if result is not None else {"domain": item.domain, "refusal": item.refusal}
        rows.append({"host": item.host, **row})
    return rows


def revert_batch(snapshot: str, patterns: Iterable[str] = (), domains: Iterable[str] = (),
                 hosts: Iterable[str] = (), *, max_per_host: int = 0, max_total: int = 0,
                 stop_on_error: bool = False, cluster: Cluster | None = None, **flags: Any) -> BatchHandle:
    """Revert every selected domain to `snapshot`, at most `max_per_host` at once per host and
    `max_total` in all (0: no limit); returns at once.  `flags` are revert()'s."""
    from tasks.batch import Batches, BatchSpec, new_batch_id

    cluster = cluster or default_cluster()
    items = select_batch(snapshot, patterns, domains, hosts, cluster)
    spec = BatchSpec(new_batch_id(), snapshot, tuple(items), flags, max_per_host, max_total, stop_on_error)
    Batches(cluster.store, cluster.app, cluster.config.host_lost_after).create(spec)
    return BatchHandle(spec.batch_id, cluster)
