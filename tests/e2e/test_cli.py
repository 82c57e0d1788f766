"""The `moa` command as a user drives it: subprocesses, real services, the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moa.services import free_port
from tests.conftest import wait_for


def moa(
    *args: str, env: dict[str, str], timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moa.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_run_writes_results_in_input_order_and_trace_shows_each_call(
    services, workers, config_file, tmp_path
):
    rows = [
        {"custom_id": f"id-{i}", "prompt": f"Topic {i}: explain tides", "team": "ops"}
        for i in range(8)
    ]
    source = write_jsonl(tmp_path / "input.jsonl", rows[::-1])  # custom ids out of order on purpose
    out = tmp_path / "results.jsonl"

    args = ("run", str(source), "--preset", "lite", "--config", str(config_file), "--out", str(out))
    ran = moa(*args, env=services.env())

    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [r["custom_id"] for r in rows[::-1]]
    for result in results:
        assert result["status"] == "completed" and result["error"] is None
        assert result["output"] and float(result["cost"]) > 0
        assert result["metadata"] == {"team": "ops"}
    assert "Calls, tokens and cost by layer and model" in ran.stdout
    assert "aggregator" in ran.stdout and "sim-proposer" in ran.stdout

    traced = moa("trace", str(results[0]["item_id"]), env=services.env())
    assert traced.returncode == 0, traced.stderr
    table_rows = [line for line in traced.stdout.splitlines() if "succeeded" in line]
    assert len(table_rows) == 7
    assert "aggregator" in traced.stdout

    listed = moa("jobs", "list", env=services.env())
    assert listed.returncode == 0 and "completed" in listed.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"custom_id": "a", "prompt": "ok"}\n{"custom_id": 5, "prompt": "x"}\n',
            "line 2: 'custom_id'",
        ),
        ('{"custom_id": "a", "prompt": "ok"}\n\n[1, 2]\n', "line 3: expected a JSON object"),
    ],
)
def test_run_rejects_invalid_lines_by_number(services, config_file, tmp_path, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(content, encoding="utf-8")

    ran = moa(
        "run", str(source), "--preset", "lite", "--config", str(config_file), env=services.env()
    )

    assert ran.returncode == 2
    assert message in " ".join(ran.stdout.split())


def test_run_with_an_unknown_preset_names_the_known_ones(services, config_file, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "prompt": "x"}])

    ran = moa(
        "run", str(source), "--preset", "nope", "--config", str(config_file), env=services.env()
    )

    assert ran.returncode == 2
    assert "unknown preset 'nope'" in ran.stdout and "lite" in ran.stdout


def test_up_status_down_manage_the_embedded_services(tmp_path):
    home = Path(tmp_path / "home")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MOA_")}
    ports = {name: str(free_port()) for name in ("PG", "REDIS", "API", "FLOWER")}
    env.update(MOA_HOME=str(home), **{f"MOA_{name}_PORT": port for name, port in ports.items()})
    try:
        up = moa("up", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        status = moa("status", env=env)
        for part in (
            "postgres",
            "valkey",
            "worker-proposers",
            "worker-aggregators",
            "worker-control",
        ):
            line = next(line for line in status.stdout.splitlines() if part in line)
            assert "running" in line, status.stdout
        assert (home / "valkey" / "appendonlydir").is_dir()  # append-only persistence is on
        assert "Flower login: user moa" in up.stdout
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['API']}/healthz") == 200, 30, "the API")
        flower = f"http://127.0.0.1:{ports['FLOWER']}/"
        wait_for(lambda: _get(flower) == 401, 30, "Flower to ask for a login")
        again = moa("up", env=env)  # reuses what runs
        assert again.returncode == 0
    finally:
        down = moa("down", env=env)
    assert down.returncode == 0
    assert "postgres" in down.stdout and "valkey" in down.stdout
    status = moa("status", env=env)
    assert "running" not in status.stdout


def _get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.local_model
def test_local_demo_preset_answers_through_the_real_local_model(services, workers, tmp_path):
    from moa.services import Managed

    source = write_jsonl(tmp_path / "q.jsonl", [
        {"custom_id": "france", "prompt": "What is the capital of France?"},
        {"custom_id": "planet", "prompt": "Which planet is the largest in our solar system?"},
    ])  # fmt: skip
    out = tmp_path / "out.jsonl"
    try:
        args = ("run", str(source), "--preset", "local-demo", "--out", str(out))
        ran = moa(*args, env=services.env(), timeout=600)
    finally:
        Managed("local-model", services.home).stop()

    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in results] == ["completed", "completed"]
    for result in results:
        answer = result["output"]
        # The base model is stopped at the end of its answer, not left to ramble on.
        assert answer and len(answer) < 400 and "Question:" not in answer
    assert "gemma-3-270m" in ran.stdout


def test_estimate_prints_tokens_and_cost_and_spends_nothing(
    services, config_file, tmp_path, engine
):
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from db.models import Job

    source = write_jsonl(
        tmp_path / "e.jsonl", [{"custom_id": f"e{i}", "prompt": "Why?"} for i in range(10)]
    )
    with Session(engine) as session:
        before = session.scalar(select(func.count()).select_from(Job))

    ran = moa("run", str(source), "--preset", "lite", "--config", str(config_file), "--estimate",
              env=services.env())  # fmt: skip

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Estimate for 10 items on 'lite'" in ran.stdout
    total = next(line for line in ran.stdout.splitlines() if "total" in line)
    assert " 35840 " in total  # 10 items x 7 calls x max_tokens 512: the upper bound
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before


def test_export_writes_markdown_and_csv_reports(services, workers, config_file, tmp_path):
    import csv

    source = write_jsonl(
        tmp_path / "x.jsonl", [{"custom_id": f"x{i}", "prompt": f"Export {i}"} for i in range(3)]
    )
    ran = moa(
        "run", str(source), "--preset", "lite", "--config", str(config_file), env=services.env()
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    job_id = ran.stdout.split("job ", 1)[1].split(":", 1)[0]

    md = moa("jobs", "export", job_id, "--format", "md", env=services.env())
    out = tmp_path / "r.csv"
    as_csv = moa("jobs", "export", job_id, "--format", "csv", "--out", str(out), env=services.env())

    assert md.returncode == 0 and f"# Job {job_id}" in md.stdout
    assert "Cost and tokens by layer and model" in md.stdout and "### x2" in md.stdout
    assert as_csv.returncode == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["custom_id"] for r in rows] == ["x0", "x1", "x2"]
    assert all(r["status"] == "completed" for r in rows)
    cancel = moa("jobs", "cancel", job_id, env=services.env())
    assert cancel.returncode == 2 and "nothing to cancel" in cancel.stdout


def test_presets_lists_the_papers_presets(services):
    ran = moa("presets", env=services.env())
    assert ran.returncode == 0
    for name in ("single", "moa-lite", "moa", "moa-strong-aggregator", "self-moa", "self-moa-seq"):
        assert f"│ {name} " in ran.stdout
    assert "arXiv:2406.04692" in ran.stdout and "arXiv:2502.00674" in ran.stdout
