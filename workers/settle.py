"""How a revert ends, in the journal, the lock and the record: succeeded, refused, or failed
and rolled back (or, once past the point of no return, rolled forward).

Shared by the step tasks (an error in a step) and recovery (a step interrupted by a crash).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from tasks import locks
from tasks.app import app
from tasks.batch import Batches
from tasks.errors import ErrorCode, Refusal, RevertError, StepFailure
from tasks.model import STEPS, RevertState, StepStatus, finished_entry, step_entry
from workers import rollback
from workers.journal import (
    OUTCOME_ABANDONED, OUTCOME_REFUSED, OUTCOME_ROLLBACK_FAILED, OUTCOME_ROLLED_BACK, OUTCOME_ROLLED_FORWARD,
    OUTCOME_SUCCEEDED,
)
from workers.probe import STATE_NAMES
from workers.steps import StepContext, emit_events, resume

log = logging.getLogger("virt_revert.worker")


def _release(ctx: StepContext) -> None:
    uuid = ctx.state.lock.get("uuid") or ctx.locked_uuid
    if uuid:
        locks.release(ctx.store.redis, uuid, ctx.request.revert_id)


def _finish(ctx: StepContext, state: RevertState, **fields: Any) -> None:
    """The record's last entry: the files this revert created that still exist, and its safety
    snapshot unless a rollback dropped it."""
    plan = ctx.plan
    files = list(ctx.state.claimed_files)
    safety = None
    if plan is not None and ctx.state.did("safety-snapshot"):
        files += plan.safety_paths
        safety = plan.safety_snapshot
    recovery = fields.get("recovery")
    if recovery and "safety_snapshot" in recovery:
        safety = recovery["safety_snapshot"]
    ctx.store.append(ctx.request.revert_id, finished_entry(
        state, time.time(), created_files=[f for f in files if os.path.exists(f)], safety_snapshot=safety, **fields))
    if ctx.request.batch_id:  # the next items of its batch may start now
        Batches(ctx.store, app, ctx.config.host_lost_after).item_ended(
            ctx.request.batch_id, ctx.request.revert_id, ctx.request.host, state)


def succeeded(ctx: StepContext) -> None:
    ctx.record("end", outcome=OUTCOME_SUCCEEDED)
    _release(ctx)
    _finish(ctx, RevertState.SUCCEEDED, end_state=str(ctx.plan.end_state))


def errored(ctx: StepContext, step: str, error: RevertError) -> None:
    """A step raised: a refusal changed nothing; a failure is rolled back."""
    refused = isinstance(error, Refusal)
    status = StepStatus.REFUSED if refused else StepStatus.FAILED
    ctx.store.append(ctx.request.revert_id, step_entry(step, status, time.time(), code=str(error.code)))
    log.log(logging.INFO if refused else logging.ERROR, "step %s: %s", status, error,
            extra={"revert_id": ctx.request.revert_id, "step": step, "code": str(error.code)})
    if refused or not ctx.state.begun:
        ctx.record("end", outcome=OUTCOME_REFUSED if refused else OUTCOME_ABANDONED, error=error.to_dict())
        _release(ctx)
        _finish(ctx, RevertState.REFUSED if refused else RevertState.FAILED,
                end_state=_domain_state(ctx), error=error.to_dict())
        return
    recovery = _roll_back(ctx, by="worker")
    _finish(ctx, RevertState.FAILED, end_state=recovery.get("end_state"), error=error.to_dict(), recovery=recovery)


def interrupted(ctx: StepContext) -> dict[str, Any]:
    """Settle a revert whose worker died mid-way (found by recovery); returns what was done."""
    state = ctx.state
    step = next((s for s in reversed(STEPS) if state.starts[s] and s not in state.ended_steps), None)
    if not state.begun:
        ctx.record("end", outcome=OUTCOME_ABANDONED)
        _finish(ctx, RevertState.FAILED, error=StepFailure(
            ErrorCode.WORKER_LOST, f"{ctx.where}: the worker stopped during validation; nothing was changed"
        ).to_dict())
        return {"revert_id": ctx.request.revert_id, "outcome": OUTCOME_ABANDONED, "actions": []}
    if state.restored:
        actions = []
        for name, function in (("resume", resume), ("emit_events", emit_events)):
            outcome = function(ctx)
            ctx.store.append(ctx.request.revert_id, step_entry(
                name, StepStatus.SKIPPED if outcome.skipped else StepStatus.SUCCEEDED, time.time(), **outcome.detail))
            actions.append(f"{name}: {'skipped' if outcome.skipped else 'done'}")
        ctx.record("end", outcome=OUTCOME_ROLLED_FORWARD, actions=actions)
        _release(ctx)
        recovery = {"by": "recovery", "outcome": OUTCOME_ROLLED_FORWARD, "interrupted_step": step,
                    "actions": actions, "end_state": str(ctx.plan.end_state)}
        _finish(ctx, RevertState.SUCCEEDED, end_state=str(ctx.plan.end_state), recovery=recovery)
        return {"revert_id": ctx.request.revert_id, **recovery}
    error = StepFailure(ErrorCode.WORKER_LOST, f"{ctx.where}: the worker stopped during step {step}; "
                                               f"the revert was rolled back")
    if step:
        ctx.store.append(ctx.request.revert_id, step_entry(step, StepStatus.FAILED, time.time(),
                                                           code=str(error.code)))
    recovery = _roll_back(ctx, by="recovery", interrupted_step=step)
    _finish(ctx, RevertState.FAILED, end_state=recovery.get("end_state"), error=error.to_dict(), recovery=recovery)
    return {"revert_id": ctx.request.revert_id, **recovery}


def _roll_back(ctx: StepContext, **about: Any) -> dict[str, Any]:
    try:
        result = rollback.roll_back(ctx.conn, ctx.state)
    except Exception as exc:  # keep the journal open: recovery tries again at the next worker start
        log.exception("rollback failed", extra={"revert_id": ctx.request.revert_id})
        ctx.record("rollback-error", error=str(exc))
        return {**about, "outcome": OUTCOME_ROLLBACK_FAILED, "actions": [], "error": str(exc),
                "end_state": _domain_state(ctx)}
    ctx.record("end", outcome=OUTCOME_ROLLED_BACK, actions=result["actions"])
    _release(ctx)
    return {**about, "outcome": OUTCOME_ROLLED_BACK, **result}


def _domain_state(ctx: StepContext) -> str | None:
    """The domain's state as libvirt reports it now (None if it is gone or libvirtd is down)."""
    try:
        uuid = ctx.state.plan.get("domain_uuid")
        dom = ctx.conn.lookupByUUIDString(uuid) if uuid else ctx.conn.lookupByName(ctx.request.domain)
        return STATE_NAMES.get(dom.state()[0])
    except Exception:
        return None
