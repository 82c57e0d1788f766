"""Commands on existing jobs and items: list, show, cancel, resume, retry, export, trace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel

from moa.cli.common import fail, session_for
from moa.cli.run import _budget, summary
from moa.console import console, jobs_table, trace_table
from moa.settings import get_settings
from pipeline.errors import MoaError

jobs_app = typer.Typer(no_args_is_help=True, help="List, inspect, cancel, resume and export jobs.")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.command()(trace)


@jobs_app.command("list")
def jobs_list(limit: int = 20) -> None:
    """The most recent jobs."""
    from db import repo

    with session_for(get_settings()) as session:
        console.print(jobs_table(repo.list_jobs(session, limit)))


@jobs_app.command("show")
def jobs_show(job_id: int) -> None:
    """A job's status, counts and cost table."""
    from db import repo
    from moa.jobs import job_record

    settings = get_settings()
    with session_for(settings) as session:
        job = repo.get_job(session, job_id)
        if job is None:
            raise fail(f"no job {job_id}")
        console.print_json(json.dumps(job_record(job)))
    summary(settings, job_id)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int) -> None:
    """Stop a job: nothing new is sent, finished results stay, calls in flight are recorded."""
    from moa.jobs import cancel
    from workers.tasks import finalize

    with session_for(get_settings()) as session:
        try:
            cancelled = cancel(session, job_id)
        except MoaError as exc:
            raise fail(str(exc)) from None
        session.commit()
    finalize.delay(job_id)
    console.print(f"job {job_id} cancelling: {cancelled} unfinished items cancelled")


def _reopen(job_id: int, statuses: tuple[str, ...], max_cost: str | None) -> int:
    from moa.jobs import reopen
    from workers.tasks import dispatch

    with session_for(get_settings()) as session:
        try:
            reopened = reopen(session, job_id, statuses, _budget(max_cost))
        except MoaError as exc:
            raise fail(str(exc)) from None
        session.commit()
    dispatch.delay(job_id)
    return reopened


MaxCost = Annotated[str | None, typer.Option(help="a new budget for the job")]


@jobs_app.command("resume")
def jobs_resume(job_id: int, max_cost: MaxCost = None) -> None:
    """Run a job's unfinished items again (after a crash, a cancel or a budget stop).
    Calls that already succeeded are reused, so nothing is paid twice."""
    from moa.jobs import UNFINISHED

    reopened = _reopen(job_id, UNFINISHED, max_cost)
    console.print(f"job {job_id} resumed: {reopened} items queued again")


@jobs_app.command("retry")
def jobs_retry(
    job_id: int,
    failed: Annotated[bool, typer.Option("--failed", help="retry the failed items")] = False,
    max_cost: MaxCost = None,
) -> None:
    """Retry a job's failed items with fresh attempts; their successful calls are reused."""
    if not failed:
        raise fail("say what to retry: --failed")
    reopened = _reopen(job_id, ("failed",), max_cost)
    console.print(f"job {job_id}: {reopened} failed items queued again")


@jobs_app.command("export")
def jobs_export(
    job_id: int,
    format: Annotated[str, typer.Option("--format", help="jsonl | csv | md")] = "jsonl",
    out: Annotated[
        Path | None, typer.Option(help="file to write (default: standard output)")
    ] = None,
) -> None:
    """Write a job's results in input order as JSONL, CSV or a Markdown report."""
    from db import repo
    from moa.export import FORMATS, export
    from moa.jobs import job_record, result_record

    if format not in FORMATS:
        raise fail(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    with session_for(get_settings()) as session:
        job = repo.get_job(session, job_id)
        if job is None:
            raise fail(f"no job {job_id}")
        records = (result_record(item) for item in repo.iter_results(session, job_id))
        rows = repo.cost_by_layer(session, job_id)
        handle = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
        try:
            count = export(format, job_record(job), rows, records, handle)
        finally:
            if out:
                handle.close()
    if out:
        console.print(f"wrote {count} items to {out}")


def trace(
    item_id: Annotated[int, typer.Argument(metavar="ITEM")],
    full: Annotated[bool, typer.Option(help="print whole outputs")] = False,
) -> None:
    """Every call of one item, layer by layer, and what happened on the way."""
    from db import repo

    with session_for(get_settings()) as session:
        loaded = repo.get_item_and_job(session, item_id)
        if loaded is None:
            raise fail(f"no item {item_id}")
        item = loaded[0]
        console.print(trace_table(item, repo.item_calls(session, item_id), full))
        for key, note in (item.notes or {}).items():
            console.print(f"[yellow]{key}[/]: {json.dumps(note)}")
        if item.output:
            console.print(Panel(item.output, title="answer"))
        elif item.error_code:
            console.print(Panel(f"{item.error_code}: {item.error}", title="error", style="red"))
