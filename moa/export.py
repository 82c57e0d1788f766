"""Writers for `moa jobs export`: a job's results as JSONL, CSV or a Markdown report.

Pure functions over plain records; the caller reads the database and feeds them in input order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TextIO

FORMATS = ("jsonl", "csv", "md")

CSV_FIELDS = (
    "custom_id",
    "status",
    "output",
    "error_code",
    "error_message",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "item_id",
    "metadata",
)

COST_COLUMNS = (
    ("Layer", "---:"),
    ("Role", "---"),
    ("Model", "---"),
    ("Calls", "---:"),
    ("Failed", "---:"),
    ("Prompt tokens", "---:"),
    ("Completion tokens", "---:"),
    ("Cost", "---:"),
    ("Mean latency (ms)", "---:"),
)


def export(
    fmt: str,
    job: Mapping[str, Any],
    cost_rows: Sequence[Any],
    records: Iterable[Mapping[str, Any]],
    out: TextIO,
) -> int:
    """Write `records` to `out` in `fmt`; returns how many records were written."""
    if fmt == "jsonl":
        return write_jsonl(records, out)
    if fmt == "csv":
        return write_csv(records, out)
    if fmt == "md":
        return write_markdown(job, cost_rows, records, out)
    raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def write_jsonl(records: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """One JSON object per line, in the order given."""
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(records: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """A header then one row per record; open a file target with newline="" (csv module rule)."""
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    count = 0
    for record in records:
        writer.writerow(_csv_row(record))
        count += 1
    return count


def _csv_row(record: Mapping[str, Any]) -> list[Any]:
    error = record.get("error") or {}
    metadata = record.get("metadata")
    return [
        record.get("custom_id"),
        record.get("status"),
        record.get("output"),
        error.get("code"),
        error.get("message"),
        record.get("prompt_tokens"),
        record.get("completion_tokens"),
        record.get("cost"),
        record.get("item_id"),
        # Compact JSON keeps one cell per row readable and parseable again.
        "" if metadata is None else json.dumps(metadata, ensure_ascii=False, separators=(",", ":")),
    ]


def write_markdown(
    job: Mapping[str, Any],
    cost_rows: Sequence[Any],
    records: Iterable[Mapping[str, Any]],
    out: TextIO,
) -> int:
    """A report for people: summary, cost by layer and model, then one section per item."""
    out.write(f"# Job {job.get('id')} (preset: {_inline(job.get('preset'))})\n\n")
    _write_summary(job, out)
    _write_cost_table(cost_rows, out)
    out.write("## Items\n")
    count = 0
    for record in records:
        _write_item(record, out)
        count += 1
    if count == 0:
        out.write("\nNo items.\n")
    return count


def _write_summary(job: Mapping[str, Any], out: TextIO) -> None:
    counts = job.get("request_counts") or {}
    rows = [
        ("Status", job.get("status")),
        (
            "Requests",
            f"{counts.get('total', 0)} total, {counts.get('completed', 0)} completed, "
            f"{counts.get('failed', 0)} failed",
        ),
        (
            "Tokens",
            f"{_int(job.get('prompt_tokens'))} prompt, "
            f"{_int(job.get('completion_tokens'))} completion",
        ),
        ("Total cost", money(job.get("cost"))),
        ("Created", job.get("created_at") or "-"),
        ("Finished", job.get("finished_at") or "-"),
    ]
    if job.get("error"):
        rows.append(("Error", job["error"]))
    out.write("## Summary\n\n| Field | Value |\n| --- | --- |\n")
    for name, value in rows:
        out.write(_table_row([name, value]))
    out.write("\n")


def _write_cost_table(cost_rows: Sequence[Any], out: TextIO) -> None:
    out.write("## Cost and tokens by layer and model\n\n")
    if not cost_rows:
        out.write("No model calls were recorded.\n\n")
        return
    out.write(_table_row([name for name, _ in COST_COLUMNS]))
    out.write(_table_row([align for _, align in COST_COLUMNS], escape=False))
    totals = [0, 0, 0, 0]
    total_cost = Decimal(0)
    for row in cost_rows:
        numbers = (row.calls, row.failed, row.prompt_tokens, row.completion_tokens)
        latency = f"{float(row.latency_ms or 0):.0f}"
        counts = (_int(n) for n in numbers)
        out.write(_table_row([row.layer, row.role, row.model, *counts, money(row.cost), latency]))
        totals = [t + _int(n) for t, n in zip(totals, numbers, strict=True)]
        total_cost += _decimal(row.cost)
    # No total latency: a mean of per-model means would weight models wrongly.
    out.write(_table_row(["**Total**", "", "", *totals, f"**{money(total_cost)}**", ""]))
    out.write("\n")


def _write_item(record: Mapping[str, Any], out: TextIO) -> None:
    out.write(f"\n### {_inline(record.get('custom_id'))}\n\n")
    out.write(
        f"Status: **{_inline(record.get('status'))}** · "
        f"{_int(record.get('prompt_tokens'))} prompt + "
        f"{_int(record.get('completion_tokens'))} completion tokens · "
        f"{money(record.get('cost'))}\n\n"
    )
    error = record.get("error")
    if error:
        out.write(f"**Error** `{_inline(error.get('code'))}`:\n\n")
        out.write(_blockquote(error.get("message") or ""))
    elif record.get("output") is None:
        out.write("_No answer._\n")
    else:
        out.write(_blockquote(record["output"]))


def money(value: Decimal | str | None) -> str:
    """Dollars with 6 decimals; costs arrive as Decimal from the database or str from records."""
    return f"${_decimal(value):.6f}"


def _decimal(value: Decimal | str | None) -> Decimal:
    return Decimal(value) if value is not None else Decimal(0)


def _int(value: Any) -> int:
    # SUM() over no rows and unfinished items give NULL; report them as 0.
    return int(value or 0)


def _inline(value: Any) -> str:
    """Text kept on one line, so it cannot end a heading or a table row early."""
    return " ".join(str("" if value is None else value).split())


def _table_row(cells: Sequence[Any], escape: bool = True) -> str:
    texts = [_inline(cell) for cell in cells]
    if escape:
        texts = [text.replace("|", "\\|") for text in texts]
    return "|" + "|".join(f" {text} " if text else " " for text in texts) + "|\n"


def _blockquote(text: str) -> str:
    # Every line, blank ones included, gets the marker so the quote is not split in two.
    lines = text.splitlines() or [""]
    return "".join(f"> {line}".rstrip() + "\n" for line in lines)
