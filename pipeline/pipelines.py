"""Nightly document pipelines as moa.toml declares them: ``[pipelines.NAME]``.

A pipeline points a preset and an instruction at a folder of documents and says
when to run (a crontab, or ``every 30s`` for trials and tests) and where the
reports go. Relative paths are taken from the moa.toml file's own directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import ConfigError

FORMATS = ("markdown", "html", "json")
_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*(s|m|h)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,\-]+$")
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


@dataclass(frozen=True)
class Schedule:
    """Either five crontab fields (UTC) or a fixed interval in seconds."""

    cron: tuple[str, ...] | None = None
    every_s: float | None = None

    def describe(self) -> str:
        if self.cron is not None:
            return " ".join(self.cron) + " (UTC)"
        return f"every {self.every_s:g}s"


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    source: Path  # a directory
    instruction: str
    preset: str
    output: Path
    glob: str = "**/*"
    format: str = "markdown"
    schedule: Schedule | None = None  # None: only run by hand

    def fingerprint(self) -> str:
        """What, besides a document's bytes, decides its report: unchanged, it is reused."""
        blob = json.dumps([self.instruction, self.preset, self.format])
        return hashlib.sha256(blob.encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """JSON-able form kept with each run, so workers need no moa.toml to finish it."""
        return {
            "name": self.name,
            "source": str(self.source),
            "glob": self.glob,
            "instruction": self.instruction,
            "preset": self.preset,
            "output": str(self.output),
            "format": self.format,
            "schedule": self.schedule.describe() if self.schedule else None,
        }


def spec_from_record(record: Mapping[str, Any]) -> PipelineSpec:
    return PipelineSpec(
        name=record["name"],
        source=Path(record["source"]),
        glob=record["glob"],
        instruction=record["instruction"],
        preset=record["preset"],
        output=Path(record["output"]),
        format=record["format"],
    )


def parse_schedule(value: Any, where: str) -> Schedule:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: schedule must be a crontab string or 'every N s|m|h'")
    text = value.strip()
    every = _EVERY.match(text)
    if every:
        seconds = float(every.group(1)) * _UNIT_S[every.group(2)]
        if seconds <= 0:
            raise ConfigError(f"{where}: schedule {text!r} must be a positive interval")
        return Schedule(every_s=seconds)
    fields = tuple(text.split())
    if len(fields) != len(CRON_FIELDS) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(
            f"{where}: schedule {text!r} is neither a crontab of five fields "
            f"({' '.join(CRON_FIELDS)}) nor 'every N s|m|h'"
        )
    return Schedule(cron=fields)


def parse_pipeline(name: str, raw: Any, base: Path | None = None) -> PipelineSpec:
    where = f"pipeline {name!r}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: a name is letters, digits, '.', '_' or '-'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    missing = [k for k in ("source", "instruction", "preset", "output") if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    instruction = _text(raw["instruction"], f"{where}: instruction")
    fmt = str(raw.get("format", "markdown")).lower()
    fmt = {"md": "markdown", "htm": "html"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    schedule = raw.get("schedule")
    return PipelineSpec(
        name=name,
        source=_path(raw["source"], base, f"{where}: source"),
        glob=_glob(raw.get("glob", "**/*"), where),
        instruction=instruction,
        preset=_text(raw["preset"], f"{where}: preset"),
        output=_path(raw["output"], base, f"{where}: output"),
        format=fmt,
        schedule=parse_schedule(schedule, where) if schedule is not None else None,
    )


_KEYS = ("source", "glob", "instruction", "preset", "output", "format", "schedule")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string")
    return value.strip()


def _glob(value: Any, where: str) -> str:
    """A pattern under the source folder: Path.glob cannot take an absolute one, and '..'
    would pick files outside the folder."""
    glob = _text(value, f"{where}: glob")
    if glob.startswith(("/", "~")) or ".." in PurePosixPath(glob).parts:
        raise ConfigError(
            f"{where}: glob {glob!r} must be relative to the source folder and stay inside it "
            "(no leading '/' or '~', no '..'); point source at the folder instead"
        )
    return glob


def _path(value: Any, base: Path | None, where: str) -> Path:
    path = Path(_text(value, where)).expanduser()
    if path.is_absolute():
        return path
    # Workers may run elsewhere: a run records absolute paths.
    return (base / path).absolute() if base is not None else path.absolute()
