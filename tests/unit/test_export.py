"""Export writers: JSONL, CSV and Markdown round-trip and stream a job's results."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from moa.export import FORMATS, export, write_csv, write_jsonl, write_markdown

TRICKY = 'Line one, with a comma\nLine "two" | piped\n\nafter a blank line'

RECORDS: list[dict[str, Any]] = [
    {
        "custom_id": "req-1",
        "status": "completed",
        "output": "Paris.",
        "error": None,
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "cost": "0.00012300",
        "item_id": 11,
        "metadata": {"lang": "fr", "tags": ["geo", "é"]},
    },
    {
        "custom_id": "req-2",
        "status": "failed",
        "output": None,
        "error": {"code": "rate_limited", "message": "too many, requests | retry later"},
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": "0E-8",
        "item_id": 12,
        "metadata": None,
    },
    {
        "custom_id": "req-3",
        "status": "completed",
        "output": TRICKY,
        "error": None,
        "prompt_tokens": 200,
        "completion_tokens": 80,
        "cost": "0.00100000",
        "item_id": 13,
        "metadata": {},
    },
]

JOB: dict[str, Any] = {
    "id": 42,
    "status": "completed",
    "preset": "default",
    "request_counts": {"total": 3, "completed": 2, "failed": 1},
    "prompt_tokens": 320,
    "completion_tokens": 110,
    "cost": "0.00112300",
    "created_at": "2025-01-02T03:04:05+00:00",
    "finished_at": "2025-01-02T03:05:00+00:00",
    "error": None,
}

COST_ROWS = [
    SimpleNamespace(
        layer=0, role="proposer", model="small|model", calls=4, failed=1,
        prompt_tokens=200, completion_tokens=60, cost=Decimal("0.00050000"),
        latency_ms=Decimal("812.4"),
    ),
    SimpleNamespace(
        layer=1, role="aggregator", model="big-model", calls=2, failed=0,
        prompt_tokens=120, completion_tokens=50, cost=Decimal("0.00062300"), latency_ms=1500.6,
    ),
]  # fmt: skip


def streamed(out: io.StringIO) -> Iterator[Mapping[str, Any]]:
    """Yield the records, checking the previous one is already written: nothing is buffered."""
    for index, record in enumerate(RECORDS):
        if index:
            assert RECORDS[index - 1]["custom_id"] in out.getvalue()
        yield record


def run(fmt: str) -> tuple[int, str, Iterator[Mapping[str, Any]]]:
    out = io.StringIO()
    records = streamed(out)
    count = export(fmt, JOB, COST_ROWS, records, out)
    return count, out.getvalue(), records


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_generator_is_consumed_once_while_writing(fmt: str) -> None:
    count, _, records = run(fmt)
    assert count == 3
    assert next(records, None) is None


def test_jsonl_round_trips() -> None:
    out = io.StringIO()
    assert write_jsonl(iter(RECORDS), out) == 3
    text = out.getvalue()
    assert "é" in text  # not \u-escaped
    lines = text.splitlines()
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == RECORDS


def test_csv_round_trips_through_dictreader() -> None:
    out = io.StringIO(newline="")
    assert write_csv(iter(RECORDS), out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert list(rows[0]) == [
        "custom_id", "status", "output", "error_code", "error_message",
        "prompt_tokens", "completion_tokens", "cost", "item_id", "metadata",
    ]  # fmt: skip
    assert [row["custom_id"] for row in rows] == ["req-1", "req-2", "req-3"]
    assert rows[2]["output"] == TRICKY
    assert rows[1]["output"] == ""
    assert rows[1]["error_code"] == "rate_limited"
    assert rows[1]["error_message"] == "too many, requests | retry later"
    assert rows[0]["error_code"] == rows[0]["error_message"] == ""
    assert rows[0]["cost"] == "0.00012300"
    assert rows[0]["item_id"] == "11"
    assert rows[0]["metadata"] == '{"lang":"fr","tags":["geo","é"]}'
    assert rows[1]["metadata"] == ""
    assert rows[2]["metadata"] == "{}"


def test_markdown_report() -> None:
    count, text, _ = run("md")
    assert count == 3
    assert text.startswith("# Job 42 (preset: default)\n")
    assert "| Status | completed |" in text
    assert "| Requests | 3 total, 2 completed, 1 failed |" in text
    assert "| Tokens | 320 prompt, 110 completion |" in text
    assert "| Total cost | $0.001123 |" in text
    assert "| Finished | 2025-01-02T03:05:00+00:00 |" in text
    assert "## Cost and tokens by layer and model" in text
    assert "| 0 | proposer | small\\|model | 4 | 1 | 200 | 60 | $0.000500 | 812 |" in text
    assert "| 1 | aggregator | big-model | 2 | 0 | 120 | 50 | $0.000623 | 1501 |" in text
    assert "| **Total** | | | 6 | 1 | 320 | 110 | **$0.001123** | |" in text


def test_markdown_items_in_order_with_answers_and_errors() -> None:
    _, text, _ = run("md")
    sections = text.split("\n### ")[1:]
    assert [section.split("\n", 1)[0] for section in sections] == ["req-1", "req-2", "req-3"]
    first, failed, tricky = sections
    assert "Status: **completed** · 120 prompt + 30 completion tokens · $0.000123" in first
    assert "> Paris.\n" in first
    assert "**failed**" in failed
    assert "`rate_limited`" in failed
    assert "> too many, requests | retry later\n" in failed
    assert '> Line one, with a comma\n> Line "two" | piped\n>\n> after a blank line\n' in tricky


def test_markdown_without_calls_or_items() -> None:
    out = io.StringIO()
    assert write_markdown({**JOB, "cost": None, "finished_at": None}, [], iter(()), out) == 0
    text = out.getvalue()
    assert "No model calls were recorded." in text
    assert "| Total cost | $0.000000 |" in text
    assert "| Finished | - |" in text
    assert "No items." in text


def test_unknown_format_names_the_allowed_ones() -> None:
    records = streamed(io.StringIO())
    with pytest.raises(ValueError, match="jsonl, csv, md"):
        export("xml", JOB, COST_ROWS, records, io.StringIO())
    assert next(records)["custom_id"] == "req-1"  # nothing was consumed
