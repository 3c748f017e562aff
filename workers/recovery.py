"""Settle a host's unfinished reverts from their journals: at worker start, and on demand.

Past the point of no return (the target restored) a revert is rolled
forward; before it, rolled back.  Locks a settled revert held are released.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from tasks.config import Config
from tasks.model import RevertRequest
from tasks.store import Store
from workers import settle
from workers.journal import Journal, unfinished
from workers.steps import StepContext

log = logging.getLogger("virt_revert.worker")


def recover(host: str, uri: str, store: Store, config: Config, *, in_flight_after: float | None = None
            ) -> list[dict[str, Any]]:
    """Settle every unfinished journal on this host.

    With `in_flight_after` (on demand, the worker serving traffic), a journal
    whose step is running now or that changed in the last `in_flight_after`
    seconds belongs to a revert in flight and is left alone.
    """
    reports = []
    for journal in unfinished(config.state_dir):
        report = _settle_one(host, uri, store, config, journal, in_flight_after)
        if report is not None:
            log.info("recovered revert", extra=report)
            reports.append(report)
    return reports


def _settle_one(host: str, uri: str, store: Store, config: Config, journal: Journal,
                in_flight_after: float | None):
    entries = journal.entries()
    if in_flight_after is not None and entries and time.time() - entries[-1]["at"] < in_flight_after:
        return None
    try:
        with journal.locked(blocking=in_flight_after is None):
            state = journal.state()
            if state.outcome is not None:
                return None
            request = RevertRequest.from_dict(state.request) if state.begun else RevertRequest(
                domain="?", snapshot="?", host=host, revert_id=journal.revert_id)
            return settle.interrupted(StepContext(request, journal, state, host, uri, store, config))
    except BlockingIOError:
        return None  # a step of it runs right now
