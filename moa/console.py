"""Rich rendering of jobs, cost tables and traces for the CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from db.models import Call, Item, Job
from moa.export import money

# Not a terminal (CI, a pipe): wide enough that the cost table is not truncated.
console = Console(width=None if sys.stdout.isatty() else 140)


def cost_table(
    rows: Sequence[Any], title: str = "Calls, tokens and cost by layer and model"
) -> Table:
    table = Table(title=title)
    for name in (
        "layer",
        "role",
        "model",
        "calls",
        "failed",
        "prompt tok",
        "completion tok",
        "cost",
        "mean latency",
    ):
        table.add_column(name, justify="right" if name not in ("role", "model") else "left")
    counts = [0, 0, 0, 0]
    total_cost = Decimal(0)
    for row in rows:
        table.add_row(
            str(row.layer), row.role, row.model, str(row.calls), str(row.failed),
            str(row.prompt_tokens or 0), str(row.completion_tokens or 0), money(row.cost),
            f"{float(row.latency_ms or 0):.0f} ms",
        )  # fmt: skip
        values = (row.calls, row.failed, row.prompt_tokens, row.completion_tokens)
        counts = [c + int(v or 0) for c, v in zip(counts, values, strict=True)]
        total_cost += row.cost or Decimal(0)
    table.add_section()
    table.add_row("", "total", "", *(str(c) for c in counts), money(total_cost), "")
    return table


def jobs_table(jobs: Sequence[Job]) -> Table:
    table = Table(title="Jobs")
    for name in ("id", "status", "preset", "total", "completed", "failed", "cost", "created"):
        table.add_column(name)
    for job in jobs:
        table.add_row(
            str(job.id),
            job.status,
            job.preset,
            str(job.total),
            str(job.completed),
            str(job.failed),
            money(job.cost),
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
        )
    return table


def trace_table(item: Item, calls: Sequence[Call], full: bool = False) -> Table:
    table = Table(title=f"Item {item.id} ({item.custom_id}): {item.status}", show_lines=full)
    for name in (
        "layer",
        "slot",
        "role",
        "model",
        "status",
        "attempt",
        "prompt tok",
        "completion tok",
        "cost",
        "latency",
        "output" if full else "output (start)",
    ):
        table.add_column(name)
    for call in calls:
        text = call.output or (f"{call.error_code}: {call.error}" if call.error_code else "")
        table.add_row(
            str(call.layer),
            str(call.slot),
            call.role,
            call.model,
            call.status,
            str(call.attempt),
            str(call.prompt_tokens),
            str(call.completion_tokens),
            money(call.cost),
            f"{call.latency_ms or 0} ms",
            text if full else _clip(text, 60),
        )
    return table


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
