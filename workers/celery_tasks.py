"""The Celery tasks of a revert: policy in the decorator, the body one call into ``workers.steps``.

Every step task is registered under its wire name (``tasks.app.task_name``).
Any error ends the chain: the record gets the step's status and a final
entry, and the domain lock is released.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from tasks.app import app, task_name
from tasks.errors import Refusal, RevertError
from tasks import locks
from tasks.model import STEPS, RevertState, StepStatus, finished_entry, step_entry
from tasks.store import Store
from workers import conn as conns
from workers.probe import STATE_NAMES
from workers.steps import STEP_FUNCTIONS, StepContext

log = logging.getLogger("virt_revert.worker")


@dataclass(frozen=True)
class Binding:
    """The host this worker process serves and its libvirtd."""

    host: str
    uri: str


_binding: Binding | None = None
_store: Store | None = None


def bind(host: str, uri: str) -> None:
    global _binding, _store
    _binding = Binding(host, uri)
    cfg = app.virt_revert_config
    _store = Store(cfg.redis_url, cfg.record_ttl)


def run_step(step: str, state: dict[str, Any]) -> dict[str, Any]:
    assert _binding is not None and _store is not None, "worker not bound to a host: call workers.celery_tasks.bind"
    revert_id = state["request"]["revert_id"]
    started = time.time()
    _store.append(revert_id, step_entry(step, StepStatus.STARTED, started))
    ctx = None
    try:
        ctx = StepContext.from_state(state, host=_binding.host, conn=conns.connection(_binding.uri),
                                     store=_store, config=app.virt_revert_config)
        outcome = STEP_FUNCTIONS[step](ctx)
    except Exception as exc:
        where = ctx.where if ctx else f"revert {revert_id}"
        error = conns.as_revert_error(exc, where, step)
        _finish_with_error(revert_id, ctx, step, error)
        if error is exc:
            raise
        raise error from exc
    status = StepStatus.SKIPPED if outcome.skipped else StepStatus.SUCCEEDED
    finished = time.time()
    _store.append(revert_id, step_entry(step, status, finished, **outcome.detail))
    log.info("step %s", status, extra={"revert_id": revert_id, "step": step,
                                       "duration_ms": round((finished - started) * 1000, 1)})
    if step == STEPS[-1]:
        _finish(ctx, RevertState.SUCCEEDED, end_state=str(ctx.plan.end_state))
    return ctx.to_state()


def _finish(ctx: StepContext, state: RevertState, *, end_state: str | None, error: dict | None = None) -> None:
    if ctx.done.locked_uuid:
        locks.release(ctx.store.redis, ctx.done.locked_uuid, ctx.request.revert_id)
    ctx.store.append(ctx.request.revert_id, finished_entry(
        state, time.time(), end_state=end_state, created_files=ctx.done.created_files,
        safety_snapshot=ctx.done.safety_snapshot, error=error))


def _finish_with_error(revert_id: str, ctx: StepContext | None, step: str, error: RevertError) -> None:
    refused = isinstance(error, Refusal)
    status = StepStatus.REFUSED if refused else StepStatus.FAILED
    _store.append(revert_id, step_entry(step, status, time.time(), code=str(error.code)))
    log.log(logging.INFO if refused else logging.ERROR, "step %s: %s", status, error,
            extra={"revert_id": revert_id, "step": step, "code": str(error.code)})
    state = RevertState.REFUSED if refused else RevertState.FAILED
    if ctx is None:
        _store.append(revert_id, finished_entry(state, time.time(), error=error.to_dict()))
        return
    _finish(ctx, state, end_state=_current_state(ctx), error=error.to_dict())


def _current_state(ctx: StepContext) -> str | None:
    """The domain's state as libvirt reports it now, for the record of a revert that did not finish."""
    try:
        dom = ctx.domain() if ctx.plan else conns.lookup_domain(ctx.conn, ctx.request.domain)
        return STATE_NAMES.get(dom.state()[0])
    except Exception:  # the domain may be gone (transient) or libvirtd down: the record says unknown
        return None


def _register(step: str):
    @app.task(name=task_name(step), bind=True, acks_late=True, reject_on_worker_lost=True,
              throws=(RevertError,), max_retries=0)
    def run(self, state: dict[str, Any]) -> dict[str, Any]:
        return run_step(step, state)

    return run


TASKS = {step: _register(step) for step in STEPS}
