"""The revert chain, built from task names alone (no import of `workers`).

Each step is its own task on the domain's host queue; each receives the
previous step's JSON state.  Task ids are derived from the revert id so
Flower and logs read `<revert id>.<step>`.
"""
from __future__ import annotations

from celery import Celery, chain

from tasks.app import host_queue, task_name
from tasks.model import STEPS, RevertRequest


def step_task_id(revert_id: str, step: str) -> str:
    return f"{revert_id}.{step}"


def revert_chain(app: Celery, request: RevertRequest) -> chain:
    queue = host_queue(request.host)
    signatures = []
    for index, step in enumerate(STEPS):
        args = ({"request": request.to_dict()},) if index == 0 else ()
        signatures.append(app.signature(task_name(step), args=args, queue=queue,
                                        task_id=step_task_id(request.revert_id, step)))
    return chain(*signatures)
