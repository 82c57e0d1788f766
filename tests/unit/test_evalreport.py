"""The report: figures per preset from their evidence, and the Markdown that shows them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pipeline.evalreport import Evidence, Pair, render_markdown, summarize


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "run_id": 3,
        "data": {"path": "q.jsonl", "name": "q", "items": 4, "hash": "ab" * 32, "limit": None},
        "judge": {"model": "gpt-4o", "provider_model": "gpt-4o-2024", "temperature": 0.0},
        "baseline": {"name": "preset single", "preset": "single"},
        "presets": rows,
        "judge_cost": "0.01",
        "bootstrap": {"seed": 0, "resamples": 2000},
        "notes": ["a note"],
    }


def test_summary_counts_invalid_verdicts_and_divides_cost_by_items() -> None:
    evidence = Evidence(
        "moa", ["qwen (Qwen/Qwen2)"], items=4, answered=3,
        pairs=[Pair(1.0, 1.0, 50.0), Pair(0.0, 0.5, -20.0), Pair(None, 1.0, 0.0)],
        ratings=[8.0, None, 6.0], exact=[True, False, True, True], lengths=[100, 200, 300],
        cost=Decimal("0.02"), latencies_s=[1.0, 3.0],
    )  # fmt: skip

    row = summarize(evidence)

    assert row["win_rate"] == 62.5 and row["pairs_valid"] == 2
    assert row["pair_verdicts_invalid"] == 1 and row["ratings_invalid"] == 1
    assert row["mt_score"] == 7.0 and row["exact_accuracy"] == 75.0
    assert row["mean_length"] == 200 and row["latency_per_item_s"] == 2.0
    assert row["cost_per_item"] == "0.00500000"
    low, high = row["ci"]
    assert low <= 62.5 <= high


def test_markdown_names_the_models_the_judge_and_the_invalid_verdicts() -> None:
    base = summarize(Evidence("single", ["qwen (Qwen/Qwen2)"], 4, is_baseline=True))
    moa = summarize(Evidence("moa", ["llama (meta/llama)", "qwen (Qwen/Qwen2)"], 4,
                             pairs=[Pair(None, None, 0.0)], ratings=[None]))  # fmt: skip

    text = render_markdown(_report([base, moa]))

    assert "# moa eval run 3" in text and "Judge: **gpt-4o** (`gpt-4o-2024`" in text
    assert "| `single` | baseline |" in text
    assert "| `moa` | - (0 of 1 pairs valid) |" in text and "2 pairwise, 1 ratings |" in text
    assert "- `moa`: llama (meta/llama), qwen (Qwen/Qwen2)" in text
    assert "- judge: gpt-4o (`gpt-4o-2024`)" in text and "Note: a note" in text
