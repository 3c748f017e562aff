"""The Celery tasks of a revert: policy in the decorator, the body one call into ``workers.steps``.

Every step task is registered under its wire name (``tasks.app.task_name``)
and carries only the request: what the revert decided and did is in the
host-local journal.  A delivery for a revert that already ended is dropped;
a step delivered too often fails the revert; any error ends it through
``workers.settle``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery.exceptions import Ignore

from tasks.app import HOST_TASK_NAMESPACE, app, task_name
from tasks.errors import ErrorCode, RevertError, StepFailure
from tasks.model import STEPS, RevertRequest, StepStatus, step_entry
from tasks.store import Store
from workers import conn as conns
from workers import faults, prune, recovery, settle
from workers.journal import Journal, JournalState
from workers.steps import STEP_FUNCTIONS, StepContext, dry_run

log = logging.getLogger("virt_revert.worker")

MAX_DELIVERIES = 3  # a step started this often without ending fails the revert instead of looping


@dataclass(frozen=True)
class Binding:
    """The host this worker process serves and its libvirtd."""

    host: str
    uri: str
    store: Store


_binding: Binding | None = None


def bind(host: str, uri: str) -> Binding:
    global _binding
    cfg = app.virt_revert_config
    _binding = Binding(host, uri, Store(cfg.redis_url, cfg.record_ttl))
    return _binding


def context(request: RevertRequest, journal: Journal, state: JournalState) -> StepContext:
    assert _binding is not None, "worker not bound to a host: call workers.celery_tasks.bind"
    return StepContext(request, journal, state, _binding.host, _binding.uri, _binding.store, app.virt_revert_config)


def run_step(task, step: str, message: dict[str, Any]) -> dict[str, Any]:
    request = RevertRequest.from_dict(message["request"])
    cfg = app.virt_revert_config
    journal = Journal(cfg.state_dir, request.revert_id)
    if faults.armed(f"{step}:duplicate") and not message.get("duplicate"):
        # Fault test: deliver this very message (its chain included) a second time, as a redelivery would.
        task.signature_from_request(task.request, args=({**message, "duplicate": True},)).apply_async()
    with journal.locked():
        state = journal.state()
        if state.outcome is not None or step in state.ended_steps:
            # A duplicate (the original chain goes on) or a redelivery after recovery settled it.
            log.info("step %s already done: duplicate delivery dropped", step,
                     extra={"revert_id": request.revert_id, "step": step, "outcome": state.outcome})
            raise Ignore()
        started = time.time()
        earlier_starts = state.starts[step]
        state.apply(journal.append("step", step=step, status="started"))
        _binding.store.append(request.revert_id, step_entry(step, StepStatus.STARTED, started))
        ctx = None
        try:
            ctx = context(request, journal, state)
            if earlier_starts >= MAX_DELIVERIES:
                raise StepFailure(ErrorCode.TOO_MANY_DELIVERIES, f"{ctx.where}: step {step} was started "
                                                                 f"{earlier_starts + 1} times without ending")
            ctx.checkpoint(f"{step}:before")
            outcome = _run(STEP_FUNCTIONS[step], ctx)
        except Exception as exc:
            error = conns.as_revert_error(exc, ctx.where if ctx else f"revert {request.revert_id}", step)
            if ctx is not None:
                settle.errored(ctx, step, error)
            if error is exc:
                raise
            raise error from exc
        status = StepStatus.SKIPPED if outcome.skipped else StepStatus.SUCCEEDED
        ctx.record("step", step=step, status="ended", detail=outcome.detail)
        finished = time.time()
        _binding.store.append(request.revert_id, step_entry(step, status, finished, **outcome.detail))
        log.info("step %s", status, extra={"revert_id": request.revert_id, "step": step,
                                           "duration_ms": round((finished - started) * 1000, 1)})
        ctx.checkpoint(f"{step}:after")
        if step == STEPS[-1]:
            settle.succeeded(ctx)
    return {"request": message["request"]}


def _run(function, ctx: StepContext):
    """Run a step; if libvirtd went away under it, reconnect and run it once more (steps check
    the state before acting, so the second run does only what the first did not)."""
    try:
        return function(ctx)
    except Exception as exc:
        if not conns.is_connection_error(exc):
            raise
        log.warning("libvirt connection lost; reconnecting", extra={"revert_id": ctx.request.revert_id})
        conns.reset()
        return function(ctx)


def _register(step: str):
    @app.task(name=task_name(step), bind=True, acks_late=True, reject_on_worker_lost=True,
              throws=(RevertError,), max_retries=0)
    def run(self, message: dict[str, Any]) -> dict[str, Any]:
        return run_step(self, step, message)

    return run


TASKS = {step: _register(step) for step in STEPS}


@app.task(name=f"{HOST_TASK_NAMESPACE}.recover", bind=True, acks_late=True, ignore_result=False)
def recover_host(self, stale_after: float | None = None) -> list[dict[str, Any]]:
    """`virt-revert recover`: settle this host's unfinished reverts that are not in flight."""
    assert _binding is not None
    cfg = app.virt_revert_config
    return recovery.recover(_binding.host, _binding.uri, _binding.store, cfg,
                            in_flight_after=cfg.stale_after if stale_after is None else stale_after)


@app.task(name=f"{HOST_TASK_NAMESPACE}.prune", bind=True, acks_late=True, ignore_result=False)
def prune_domain(self, domain: str, keep: int, older_than: float, dry_run: bool) -> dict[str, Any]:
    """`virt-revert prune`: drop old safety snapshots and the kept files nothing uses any more."""
    assert _binding is not None
    cfg = app.virt_revert_config
    return prune.prune(conns.connection(_binding.uri), domain, keep=keep, older_than=older_than, dry_run=dry_run,
                       storage_roots=cfg.storage_roots).to_dict()


@app.task(name=f"{HOST_TASK_NAMESPACE}.plan", bind=True, ignore_result=False)
def plan_revert(self, request: dict[str, Any]) -> dict[str, Any]:
    """A batch's --dry-run: validate one revert, change nothing."""
    assert _binding is not None
    return dry_run(conns.connection(_binding.uri), RevertRequest.from_dict(request), app.virt_revert_config)
