"""The Celery app: broker and backend from settings, reliability options, queue routing.

Queues: proposer calls on ``moa.propose``, chord callbacks (aggregation) on
``moa.aggregate``, control work (dispatch, finalize) on ``moa.control``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger
from sqlalchemy.exc import InterfaceError, OperationalError

from moa.settings import Settings, get_settings

PROPOSE_QUEUE = "moa.propose"
AGGREGATE_QUEUE = "moa.aggregate"
CONTROL_QUEUE = "moa.control"

# A database restart or failover breaks the pooled connections (there is no pre-ping): the
# task that meets one is retried with backoff and redoes its work, which is idempotent
# (calls are keyed, item moves and job ends are compare-and-set). Every task takes these.
DB_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "retry_kwargs": {"max_retries": 20},
}

POOLS = {
    "proposers": (PROPOSE_QUEUE,),
    "aggregators": (AGGREGATE_QUEUE,),
    "control": (CONTROL_QUEUE,),
    "all": (PROPOSE_QUEUE, AGGREGATE_QUEUE, CONTROL_QUEUE),
}


def broker_options(visibility_timeout_s: int) -> dict[str, Any]:
    """A message taken by a worker that then died comes back to its queue once it has been
    unacknowledged for ``visibility_timeout_s``. Workers look for such messages every few
    seconds (kombu's default sweep runs every 100 s, long after a short timeout expired)."""
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    }


def create_app(settings: Settings) -> Celery:
    app = Celery("moa", include=["workers.tasks", "workers.webhooks", "workers.pipelines"])
    app.conf.update(
        broker_url=settings.effective_redis_url,
        result_backend=settings.effective_redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_options(settings.visibility_timeout_s),
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        # At-least-once: a message is acknowledged after its task ran, and given back
        # to the queue when the worker running it dies. Tasks are idempotent by key.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        task_default_queue=CONTROL_QUEUE,
        task_routes={
            "moa.propose": {"queue": PROPOSE_QUEUE},
            "moa.advance": {"queue": AGGREGATE_QUEUE},
            "moa.item_errored": {"queue": AGGREGATE_QUEUE},
            "moa.dispatch": {"queue": CONTROL_QUEUE},
            "moa.finalize": {"queue": CONTROL_QUEUE},
            "moa.webhook": {"queue": CONTROL_QUEUE},
            "moa.pipeline_trigger": {"queue": CONTROL_QUEUE},
            "moa.pipeline_advance": {"queue": CONTROL_QUEUE},
            "moa.sweep": {"queue": CONTROL_QUEUE},
        },
        beat_schedule={
            "sweep-stalled-items": {
                "task": "moa.sweep",
                "schedule": settings.sweep_interval_s,
                "args": (settings.stall_after_s,),
                "options": {"expires": settings.sweep_interval_s},
            },
        },
        worker_send_task_events=settings.task_events,
        # Flower learns of a task when a worker receives it; a "sent" event per publish
        # would double the event traffic for little.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def quiet_task_logs(settings: Settings) -> None:
    """Per-task lines ("received", "succeeded", each HTTP request) only when asked for."""
    if not settings.log_each_task:
        for name in ("celery.app.trace", "celery.worker.strategy", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)


app = create_app(get_settings())


@after_setup_logger.connect
def _quiet(**_: object) -> None:
    quiet_task_logs(get_settings())
