"""Celery beat's schedule, built from the pipelines moa.toml declares."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from celery.schedules import crontab

from pipeline.pipelines import Schedule
from pipeline.specs import Config

TRIGGER_TASK = "moa.pipeline_trigger"
CRON_EXPIRES_S = 3600  # a tick not run within the hour is dropped, not run late


def celery_schedule(schedule: Schedule) -> crontab | timedelta:
    if schedule.cron is not None:
        minute, hour, day_of_month, month_of_year, day_of_week = schedule.cron
        return crontab(
            minute=minute, hour=hour, day_of_month=day_of_month,
            month_of_year=month_of_year, day_of_week=day_of_week,
        )  # fmt: skip
    assert schedule.every_s is not None
    return timedelta(seconds=schedule.every_s)


def beat_schedule(config: Config, config_path: Path | None) -> dict[str, dict[str, Any]]:
    """One entry per scheduled pipeline. The worker reads the same moa.toml (its path
    travels with the tick) so the run uses what beat scheduled."""
    entries: dict[str, dict[str, Any]] = {}
    for spec in config.pipelines.values():
        if spec.schedule is None:
            continue
        # Ticks that wait in the queue while workers are down expire instead of piling up.
        expires = spec.schedule.every_s or CRON_EXPIRES_S
        entries[f"pipeline:{spec.name}"] = {
            "task": TRIGGER_TASK,
            "schedule": celery_schedule(spec.schedule),
            "args": (spec.name, str(config_path) if config_path else None, False, "beat"),
            "options": {"expires": expires},
        }
    return entries
