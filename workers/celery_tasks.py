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
from workers import faults, recovery, settle
from workers.journal import Journal
from workers.steps import STEP_FUNCTIONS, StepContext

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


def context(request: RevertRequest, journal: Journal) -> StepContext:
    assert _binding is not None, "worker not bound to a host: call workers.celery_tasks.bind"
    return StepContext(request, journal, journal.state(), _binding.host, conns.connection(_binding.uri),
                       _binding.store, app.virt_revert_config)


def run_step(task, step: str, message: dict[str, Any]) -> dict[str, Any]:
    request = RevertRequest.from_dict(message["request"])
    cfg = app.virt_revert_config
    journal = Journal(cfg.state_dir, request.revert_id)
    if faults.armed(f"{step}:duplicate") and not task.request.headers.get("virt_revert_duplicate"):
        task.apply_async((message,), queue=task.request.delivery_info.get("routing_key"),
                         headers={"virt_revert_duplicate": True})  # fault test: the step delivered twice
    with journal.locked():
        state = journal.state()
        if state.outcome is not None:
            log.info("revert already ended (%s): delivery of %s dropped", state.outcome, step,
                     extra={"revert_id": request.revert_id, "step": step})
            raise Ignore()
        started = time.time()
        journal.append("step", step=step, status="started")
        _binding.store.append(request.revert_id, step_entry(step, StepStatus.STARTED, started))
        ctx = None
        try:
            ctx = context(request, journal)
            if state.starts[step] >= MAX_DELIVERIES:
                raise StepFailure(ErrorCode.TOO_MANY_DELIVERIES, f"{ctx.where}: step {step} was started "
                                                                 f"{state.starts[step] + 1} times without ending")
            ctx.checkpoint(f"{step}:before")
            outcome = STEP_FUNCTIONS[step](ctx)
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
    return message


def _register(step: str):
    @app.task(name=task_name(step), bind=True, acks_late=True, reject_on_worker_lost=True,
              throws=(RevertError,), max_retries=0)
    def run(self, message: dict[str, Any]) -> dict[str, Any]:
        return run_step(self, step, message)

    return run


TASKS = {step: _register(step) for step in STEPS}


@app.task(name=f"{HOST_TASK_NAMESPACE}.recover", bind=True, acks_late=True, ignore_result=False)
def recover_host(self) -> list[dict[str, Any]]:
    """`virt-revert recover`: settle this host's unfinished reverts that are not in flight."""
    assert _binding is not None
    return recovery.recover(_binding.host, conns.connection(_binding.uri), _binding.store,
                            app.virt_revert_config, in_flight_after=app.virt_revert_config.stale_after)
