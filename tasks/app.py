"""The Celery application shared by clients, workers and Flower (`celery -A tasks.app flower`).

Policy lives here: JSON only, late acks (steps are idempotent), one message
prefetched per worker thread, task events on so Flower sees every step.
"""
from __future__ import annotations

from celery import Celery

from tasks import config as config_mod

TASK_NAMESPACE = "virt_revert.revert"
HOST_TASK_NAMESPACE = "virt_revert.host"


def task_name(step: str) -> str:
    """The wire name of a step's task: the contract between clients and workers."""
    return f"{TASK_NAMESPACE}.{step}"


def host_queue(host: str) -> str:
    return f"host.{host}"


def make_app(cfg: config_mod.Config | None = None) -> Celery:
    cfg = cfg or config_mod.load()
    app = Celery("virt_revert", broker=cfg.broker_url, backend=cfg.result_backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # The chain carries each step's state in the next message and the revert's record is its
        # progress log: results and STARTED states would be ~14 KB written per hop for no reader.
        task_ignore_result=True,
        task_track_started=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_expires=3600,
        # Longer than the longest step, so a slow restore is not redelivered to another thread.
        broker_transport_options={"visibility_timeout": 4 * 3600},
        result_backend_transport_options={"visibility_timeout": 4 * 3600},
        broker_connection_retry_on_startup=True,
        task_default_queue="virt-revert",
        worker_hijack_root_logger=False,
    )
    app.virt_revert_config = cfg
    return app


app = make_app()
