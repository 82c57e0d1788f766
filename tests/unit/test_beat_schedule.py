"""Beat's entries from moa.toml: a crontab or an interval per scheduled pipeline."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from celery.schedules import crontab

from pipeline.specs import parse_config
from workers.beat import beat_schedule

BASE = {
    "providers": {"p": {"base_url": "http://x/v1"}},
    "models": {"m": {"provider": "p", "model": "m"}},
    "presets": {"one": {"aggregator": "m"}},
}


def _pipeline(schedule: str | None) -> dict[str, str]:
    fields = {"source": "/d", "instruction": "x", "preset": "one", "output": "/o"}
    return {**fields, "schedule": schedule} if schedule else fields


def test_entries_for_scheduled_pipelines_only() -> None:
    config = parse_config({
        **BASE,
        "pipelines": {
            "nightly": _pipeline("30 2 * * 1-5"),
            "often": _pipeline("every 2s"),
            "by-hand": _pipeline(None),
        },
    })  # fmt: skip
    entries = beat_schedule(config, Path("/etc/moa.toml"))
    assert sorted(entries) == ["pipeline:nightly", "pipeline:often"]
    nightly = entries["pipeline:nightly"]
    assert nightly["schedule"] == crontab(minute="30", hour="2", day_of_week="1-5")
    assert nightly["args"] == ("nightly", "/etc/moa.toml", False, "beat")
    assert nightly["task"] == "moa.pipeline_trigger"
    often = entries["pipeline:often"]
    assert often["schedule"] == timedelta(seconds=2)
    assert often["options"] == {"expires": 2.0}
