"""`moa eval` as a user drives it: on the loopback simulator, and `--quick` on the real local
model. The simulator echoes the start of the last user message it was sent, so the data
below is written for that: "Reply [[A]]" makes the judge's echo a pairwise verdict for A,
"Rate [[7]]" a rating of 7, and anything else an unreadable verdict."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.e2e.test_cli import moa, write_jsonl

EVAL_CONFIG = """
[providers.evalsim]
base_url = "SIM_URL"
timeout_s = 10

[models.eval-a]
provider = "evalsim"
model = "same-eval-a"
input_per_1m = "1.00"
output_per_1m = "2.00"

[models.eval-judge]
provider = "evalsim"
model = "same-eval-judge"
input_per_1m = "1.00"
output_per_1m = "1.00"

[presets.eval-single]
aggregator = "eval-a"

[presets.eval-lite]
aggregator = "eval-a"
[[presets.eval-lite.layers]]
agents = [{ model = "eval-a", samples = 3 }]
"""

ROWS = [
    {"custom_id": "n1", "prompt": "Say 42", "answer": "42"},
    {"custom_id": "o1", "prompt": "Reply [[A]]"},
    {"custom_id": "o2", "prompt": "Rate [[7]]"},
    {"custom_id": "t1", "turns": ["Say 1", "Say 2"]},
]


def _run_id(stdout: str) -> int:
    found = re.search(r"moa eval run (\d+)", stdout)
    assert found, stdout
    return int(found.group(1))


def test_eval_on_the_simulator_judges_both_orders_scores_and_stores_the_run(
    services, workers, sim, engine, tmp_path
):
    from db.models import EvalRun, EvalVerdict, Job

    config = tmp_path / "eval.toml"
    config.write_text(EVAL_CONFIG.replace("SIM_URL", sim.base_url), encoding="utf-8")
    data = write_jsonl(tmp_path / "set.jsonl", ROWS)
    out = tmp_path / "report"

    ran = moa(
        "eval", "--data", str(data), "--presets", "eval-single,eval-lite", "--judge", "eval-judge",
        "--config", str(config), "--out", str(out), env=services.env(),
    )  # fmt: skip

    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = _run_id(ran.stdout)
    report = json.loads((out / "report.json").read_text())
    single, lite = report["presets"]
    # The baseline is the first preset: no win rate of its own.
    assert (single["preset"], single["baseline"], single["pairs"]) == ("eval-single", True, 0)
    # Exact match reads each preset's own answer: the aggregator's echo ends in "(saw 3
    # numbered answers)", so its last number is 3, not 42.
    assert (single["exact_accuracy"], lite["exact_accuracy"]) == (100.0, 0.0)
    # Pairwise: 4 items x 2 orders; only "Reply [[A]]" gives readable verdicts, A both times:
    # the first-position preference cancels to 50%. The other 6 are counted, not guessed.
    assert (lite["pairs"], lite["pairs_valid"], lite["pair_verdicts_invalid"]) == (4, 1, 6)
    assert lite["win_rate"] == 50.0 and lite["ci"] == [50.0, 50.0]
    # Ratings: o1, o2 and both turns of t1; only "Rate [[7]]" reads as a rating.
    for row in (single, lite):
        assert (row["ratings"], row["ratings_invalid"], row["mt_score"]) == (4, 3, 7.0)
    assert float(lite["cost_per_item"]) > float(single["cost_per_item"]) > 0
    assert float(report["judge_cost"]) > 0
    markdown = (out / "report.md").read_text()
    assert "eval-a (same-eval-a)" in markdown and "Judge: **eval-judge**" in markdown
    assert (out / "quality_vs_cost.png").read_bytes().startswith(b"\x89PNG")

    # Turn 2 is a conversation: each preset's second call carries its own first answer.
    turn2 = [
        r["body"]["messages"]
        for r in httpx.get(f"{sim.base_url.removesuffix('/v1')}/_sim/requests",
                           params={"model": "same-eval-a"}).json()
        if r["body"]["messages"][-1]["content"] == "Say 2"
    ]  # fmt: skip
    assert len(turn2) == 1 + 4  # eval-single: 1 call; eval-lite: 3 proposers + aggregator
    for messages in turn2:
        user_assistant = [m for m in messages if m["role"] != "system"]
        assert [m["role"] for m in user_assistant] == ["user", "assistant", "user"]
        assert user_assistant[1]["content"].startswith("[sim model=same-eval-a] answer to: Say 1")

    with Session(engine) as session:
        run = session.get(EvalRun, run_id)
        assert run is not None and run.status == "completed"
        assert run.data_hash == hashlib.sha256(b"set.jsonl\0" + data.read_bytes()).hexdigest()
        lite_agents = run.config["presets"]["eval-lite"]["preset"]["layers"][0]["agents"]
        assert [a["temperature"] for a in lite_agents] == [0.7, 0.7, 0.7]
        assert run.config["judge"]["preset"]["aggregator"]["temperature"] == 0.0
        job_ids = [j for ids in run.jobs.values() for j in ids]
        assert len(job_ids) == 5  # 2 presets x 2 turns, and the judge
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
        assert {job.status for job in jobs} == {"completed"}
        verdicts = session.scalars(select(EvalVerdict).where(EvalVerdict.run_id == run_id)).all()
        assert len(verdicts) == 2 + 8 + 8  # exact, pairwise, ratings
        invalid = [v for v in verdicts if v.kind != "exact" and v.value is None]
        assert len(invalid) == 12 and all(v.problem and v.judge_output for v in invalid)

    shown = moa("eval", "show", str(run_id), env=services.env())
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"eval run {run_id}: completed" in shown.stdout
    assert run.data_hash in shown.stdout
    assert "eval-a (t=0.7, 512)" in shown.stdout and "eval-judge (t=0.0" in shown.stdout
    assert "moa eval run" in shown.stdout and "50.0" in shown.stdout


def test_eval_refuses_unknown_presets_and_judges_before_running_anything(services, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])

    bad_preset = moa("eval", "--data", str(data), "--presets", "nope", "--judge", "gpt-4o",
                     env=services.env())  # fmt: skip
    bad_judge = moa("eval", "--data", str(data), "--presets", "single", "--judge", "nobody",
                    env=services.env())  # fmt: skip
    missing = moa("eval", "show", "999999", env=services.env())

    assert bad_preset.returncode == 2 and "unknown preset 'nope'" in bad_preset.stdout
    assert bad_judge.returncode == 2 and "unknown model 'nobody'" in bad_judge.stdout
    assert missing.returncode == 2 and "no eval run 999999" in missing.stdout


@pytest.mark.local_model
def test_quick_eval_runs_offline_on_the_local_model_end_to_end(services, workers, tmp_path):
    from moa.services import Managed

    out = tmp_path / "quick"
    started = time.monotonic()
    try:
        ran = moa("eval", "--quick", "--limit", "6", "--out", str(out), env=services.env(),
                  timeout=600)  # fmt: skip
    finally:
        Managed("local-model", services.home).stop()
    took = time.monotonic() - started

    assert ran.returncode == 0, ran.stdout + ran.stderr
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert [row["preset"] for row in report["presets"]] == ["local-single", "local-self-moa"]
    assert report["judge"]["provider_model"] == "gemma-3-270m"
    for row in report["presets"]:
        assert row["answered"] == 6 and row["exact_items"] == 4
        assert row["models"] == ["local (gemma-3-270m)"]
        assert row["ratings"] == 2 and row["latency_per_item_s"] > 0
    moa_row = report["presets"][1]
    assert moa_row["pairs"] == 6
    # Whatever the small judge says, an item's two verdicts are both used or it has an invalid one.
    dropped = moa_row["pairs"] - moa_row["pairs_valid"]
    assert dropped <= moa_row["pair_verdicts_invalid"] <= 2 * dropped
    markdown = (out / "report.md").read_text()
    assert "Models that produced these numbers" in markdown and "gemma-3-270m" in markdown
    assert (out / "quality_vs_cost.png").stat().st_size > 10_000
    print(f"moa eval --quick --limit 6: {took:.0f} s\n{markdown}")
