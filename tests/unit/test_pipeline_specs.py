"""Pipelines in moa.toml: what is accepted, and clear errors for what is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.pipelines import Schedule, parse_schedule
from pipeline.specs import load_config, parse_config

BASE = {
    "providers": {"p": {"base_url": "http://x/v1"}},
    "models": {"m": {"provider": "p", "model": "m"}},
    "presets": {"one": {"aggregator": "m"}},
}


def _config(pipeline: dict[str, Any]) -> Any:
    return parse_config({**BASE, "pipelines": {"contracts": pipeline}}, base=Path("/srv/moa"))


GOOD = {
    "source": "docs",
    "instruction": "List the risks as a table",
    "preset": "one",
    "output": "/var/reports",
    "schedule": "30 2 * * 1-5",
    "format": "HTML",
}


def test_a_pipeline_with_relative_folders_taken_from_the_config_file() -> None:
    spec = _config(GOOD).pipeline("contracts")
    assert spec.source == Path("/srv/moa/docs")
    assert spec.output == Path("/var/reports")
    assert (spec.glob, spec.format) == ("**/*", "html")
    assert spec.schedule == Schedule(cron=("30", "2", "*", "*", "1-5"))


def test_load_config_resolves_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "moa.toml"
    path.write_text(
        '[pipelines.t]\nsource = "in"\ninstruction = "x"\npreset = "one"\noutput = "out"\n',
        encoding="utf-8",
    )
    spec = load_config(path).pipeline("t")
    assert (spec.source, spec.output, spec.schedule) == (tmp_path / "in", tmp_path / "out", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("every 2s", Schedule(every_s=2.0)),
        ("every 1.5 m", Schedule(every_s=90.0)),
        ("every 1h", Schedule(every_s=3600.0)),
        ("0 3 * * *", Schedule(cron=("0", "3", "*", "*", "*"))),
        ("*/15 * * * mon", Schedule(cron=("*/15", "*", "*", "*", "mon"))),
    ],
)
def test_schedules(text: str, expected: Schedule) -> None:
    assert parse_schedule(text, "here") == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"instruction": None}, "missing instruction"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"format": "pdf"}, "format must be one of markdown, html, json"),
        ({"schedule": "0 3 * *"}, "neither a crontab of five fields"),
        ({"schedule": "every 0s"}, "positive interval"),
        ({"schedule": "nightly"}, "neither a crontab"),
        ({"instruction": "  "}, "instruction must be a non-empty string"),
        ({"sourse": "typo"}, "unknown key(s) sourse"),
        ({"glob": "/data/*.pdf"}, "glob '/data/*.pdf' must be relative"),
        ({"glob": "../other/*.pdf"}, "glob '../other/*.pdf' must be relative"),
        ({"glob": "in/../../*.txt"}, "glob 'in/../../*.txt' must be relative"),
        ({"glob": "~/docs/*"}, "glob '~/docs/*' must be relative"),
    ],
)
def test_invalid_pipelines_are_named_in_the_error(change: dict[str, Any], message: str) -> None:
    pipeline = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match="pipeline 'contracts'") as raised:
        _config(pipeline)
    assert message in str(raised.value)


def test_an_unknown_pipeline_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown pipeline 'x' \(known: contracts\)"):
        _config(GOOD).pipeline("x")
