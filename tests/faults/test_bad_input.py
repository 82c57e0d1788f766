"""A corpus of bad input through both ways in: the `moa run` command (a subprocess) and
`moa.jobs.create_job` (the service call the API makes). Each case gets a clear error that
names the problem, and its line where there is one; the CLI exits with 2; no job is left."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from db.models import Job
from moa.jobs import JobOptions, create_job
from pipeline.errors import ConfigError, MoaError
from pipeline.inputs import InputError
from tests.conftest import Services

OK = b'{"custom_id": "a", "prompt": "fine"}\n'
DEEP = 100_000  # levels of nesting on one line, far past Python's recursion limit

CORPUS = [
    pytest.param(b"", ["invalid input: the input has no items"], id="empty-file"),
    pytest.param(b"\n   \n\t\n\n", ["invalid input: the input has no items"], id="blank-lines"),
    pytest.param(OK + b"\n" + b'{"custom_id": "b", "prompt": \n',
                 ["1 invalid input line(s):", "line 3: invalid JSON (JSONDecodeError"],
                 id="invalid-json"),
    pytest.param(OK + b'{"custom_id": "b", "prompt": "caf\xe9 \xff"}\n',
                 ["line 2: not valid UTF-8"], id="invalid-utf8"),
    pytest.param(OK + b'{"custom_id": 5, "prompt": "x"}\n',
                 ["line 2: 'custom_id' is required and must be a non-empty string"],
                 id="custom-id-a-number"),
    pytest.param(OK + b'{"custom_id": "b", "prompt": ["x", "y"]}\n',
                 ["line 2: 'prompt' must be a non-empty string"], id="prompt-a-list"),
    pytest.param(OK + b'{"prompt": "who am I?"}\n',
                 ["line 2: 'custom_id' is required"], id="missing-custom-id"),
    pytest.param(OK + b'{"custom_id": "b", "prompt": "x"}\n{"custom_id": "a", "prompt": "y"}\n',
                 ["line 3: duplicate custom_id 'a'"], id="duplicate-custom-id"),
    pytest.param(b'{"custom_id": "[/x]", "prompt": "x"}\n{"custom_id": "[/x]", "prompt": "y"}\n',
                 ["line 2: duplicate custom_id '[/x]'"], id="duplicate-custom-id-like-markup"),
    pytest.param(OK + b'{"custom_id": "big", "prompt": "' + b"x" * 10_000_000 + b'"}\n',
                 ["line 2: prompt has 10000000 characters, the limit is 100000"],
                 id="10MB-prompt"),
    pytest.param(OK + b"[" * DEEP + b"]" * DEEP + b"\n",
                 ["line 2: invalid JSON (RecursionError"], id="deeply-nested-lists"),
    pytest.param(OK + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"\n",
                 ["line 2: invalid JSON (RecursionError"], id="deeply-nested-objects"),
    pytest.param(b'[1, 2]\n{"custom_id": "b"}\n' + OK + b'"just a string"\n',
                 ["3 invalid input line(s):", "line 1: expected a JSON object, got list",
                  "line 2: give exactly one of 'prompt'",
                  "line 4: expected a JSON object, got str"],
                 id="several-bad-lines-all-named"),
]  # fmt: skip


def moa_run(
    services: Services, config_file: Path, source: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moa.cli", "run", str(source), "--config", str(config_file), *args],
        env=services.env(COLUMNS="200"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def flat(text: str) -> str:
    """Rich wraps long lines: compare with the whitespace collapsed."""
    return " ".join(text.split())


def job_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def create(engine: Engine, config: Any, source: Path, preset: str, **options: Any) -> None:
    """The API's path: create_job in a transaction the caller rolls back on an error."""
    with Session(engine) as session, source.open("rb") as lines:
        try:
            create_job(session, config, preset, lines, JobOptions(**options))
            session.commit()
        finally:
            session.rollback()


@pytest.mark.parametrize(("content", "expected"), CORPUS)
def test_bad_input_is_refused_by_line_on_both_paths_and_leaves_no_job(
    services, engine, config, config_file, tmp_path, content, expected
):
    source = tmp_path / "input.jsonl"
    source.write_bytes(content)
    before = job_count(engine)

    ran = moa_run(services, config_file, source, "--preset", "lite")

    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    shown = flat(ran.stdout)
    assert shown.startswith("error: "), shown[:500]
    for part in expected:
        assert part in shown, shown[:500]

    with pytest.raises(InputError) as raised:
        create(engine, config, source, "lite")
    message = str(raised.value)
    for part in expected:
        assert part in flat(message)
    assert raised.value.errors
    assert all(f"line {e.line}: " in message for e in raised.value.errors if e.line)

    assert job_count(engine) == before


@pytest.mark.parametrize("preset", ["nope", "[/nope]"])
def test_an_unknown_preset_is_named_with_the_known_ones(
    services, engine, config, config_file, tmp_path, preset
):
    source = tmp_path / "input.jsonl"
    source.write_bytes(OK)
    before = job_count(engine)

    ran = moa_run(services, config_file, source, "--preset", preset)

    assert ran.returncode == 2, ran.stdout + ran.stderr
    shown = flat(ran.stdout)
    assert f"error: unknown preset {preset!r}" in shown and "lite" in shown, shown
    with pytest.raises(ConfigError, match="unknown preset"):
        create(engine, config, source, preset)
    assert job_count(engine) == before


@pytest.mark.parametrize("amount", ["-1", "0", "NaN", "Infinity"])
def test_a_budget_that_is_not_positive_is_refused(
    services, engine, config, config_file, tmp_path, amount
):
    source = tmp_path / "input.jsonl"
    source.write_bytes(OK)
    before = job_count(engine)

    ran = moa_run(services, config_file, source, "--preset", "lite", "--max-cost", amount)

    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    assert f"--max-cost must be a positive amount, not {amount!r}" in flat(ran.stderr)
    # The service call the API makes refuses it too, by itself.
    with pytest.raises(MoaError, match=f"budget must be positive, not {amount}"):
        create(engine, config, source, "lite", budget=Decimal(amount))
    assert job_count(engine) == before
