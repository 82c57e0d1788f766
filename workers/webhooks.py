"""Webhooks: a job's end is POSTed to the URL given at submission, signed, retried with backoff.

The ``Moa-Signature`` header is ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
with the server's MOA_WEBHOOK_SECRET; a receiver recomputes it and checks the time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
from celery import Task
from celery.utils.log import get_task_logger

from db import repo
from moa.jobs import job_record
from moa.settings import get_settings
from workers import resources
from workers.app import DB_RETRY, app

log = get_task_logger(__name__)
EVENTS = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}
MAX_ATTEMPTS = 8


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does: the signature matches and is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    fresh = abs(time.time() - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


@app.task(name="moa.webhook", bind=True, max_retries=MAX_ATTEMPTS, ignore_result=True, **DB_RETRY)
def deliver_webhook(self: Task, job_id: int) -> None:
    """Deliver a job's end event once: a Redis lock keeps two deliveries from racing, the
    job's ``webhook_sent_at`` marks it done."""
    secret = get_settings().webhook_secret
    with resources.sessions()() as session:
        job = repo.get_job(session, job_id)
        if job is None or not job.webhook_url or job.webhook_sent_at or not secret:
            return
        event = EVENTS.get(job.status)
        if event is None:
            return
        body = json.dumps({"type": event, "data": job_record(job)}, sort_keys=True).encode()
        url = job.webhook_url
    lock = resources.redis().lock(f"moa:webhook:{job_id}", timeout=60, blocking=False)
    if not lock.acquire():
        return
    try:
        _post(self, url, body, secret)
        with resources.sessions().begin() as session:
            repo.mark_webhook_sent(session, job_id)
    finally:
        lock.release()


def _post(task: Task, url: str, body: bytes, secret: str) -> None:
    headers = {
        "Content-Type": "application/json",
        "Moa-Signature": sign(secret, int(time.time()), body),
    }
    try:
        response = resources.http_client().post(url, content=body, headers=headers, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        delay = min(300, 2**task.request.retries)
        log.warning("webhook to %s failed (%s); retry in %ss", url, type(exc).__name__, delay)
        raise task.retry(countdown=delay) from None
