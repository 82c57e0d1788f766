"""`moa pipelines list|run|history`: document pipelines declared in moa.toml."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from db.models import PipelineRun
from moa.cli.common import ConfigOption, fail, session_for
from moa.console import console
from moa.export import money
from moa.settings import Settings, get_settings, load_moa_config
from moa.stack import Stack
from pipeline.errors import MoaError

pipelines_app = typer.Typer(
    no_args_is_help=True, help="Document pipelines: a folder in, a report per document out."
)


def register(app: typer.Typer) -> None:
    app.add_typer(pipelines_app, name="pipelines")


@pipelines_app.command("list")
def pipelines_list(config: ConfigOption = None) -> None:
    """The pipelines moa.toml declares, their schedules and their last runs."""
    from db import pipelines as runs

    settings = get_settings()
    try:
        moa_config = load_moa_config(settings, config)
    except MoaError as exc:
        raise fail(str(exc)) from None
    with session_for(settings) as session:
        last = runs.last_runs(session)
    table = Table(title="Pipelines")
    for name in ("pipeline", "source", "preset", "schedule", "output", "last run"):
        table.add_column(name)
    for name, spec in sorted(moa_config.pipelines.items()):
        run = last.get(name)
        table.add_row(
            name, f"{spec.source}/{spec.glob}", spec.preset,
            spec.schedule.describe() if spec.schedule else "by hand",
            f"{spec.output} ({spec.format})", _run_line(run) if run else "never",
        )  # fmt: skip
    console.print(table)


def _run_line(run: PipelineRun) -> str:
    return (
        f"{run.id} {run.status} {run.created_at:%Y-%m-%d %H:%M}: {run.processed} processed, "
        f"{run.skipped} skipped, {run.failed} failed"
    )


@pipelines_app.command("run")
def pipelines_run(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="reprocess unchanged documents")] = False,
    config: ConfigOption = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="start the run and return")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the run")] = 24 * 3600,
) -> None:
    """Run a pipeline now: new and changed documents get reports, then the index is written."""
    from moa import pipelines
    from workers.pipelines import after_start

    settings = get_settings()
    try:
        moa_config = load_moa_config(settings, config)
        spec = moa_config.pipeline(name)
        if settings.embedded_database or settings.embedded_redis:
            with console.status("starting services…"):
                Stack(settings).up()
        with session_for(settings) as session:
            started = pipelines.start_run(session, moa_config, spec, force=force)
            session.commit()
    except MoaError as exc:
        raise fail(str(exc)) from None
    # Dispatches the new run's job, or nudges the active run as a beat tick does: its
    # advance message may have been lost, and a pipeline with no schedule has no tick.
    after_start(started)
    if started.run_id is None:
        raise fail(_busy(name, started.active_run_id))
    console.print(f"pipeline {name}: run {started.run_id}, job {started.job_id}")
    if not no_wait:
        _wait_and_report(settings, started.run_id, timeout)


def _busy(name: str, active_run_id: int | None) -> str:
    if active_run_id is None:  # it ended between our claim and our look
        return f"a run of pipeline {name!r} has just finished; run again"
    return (
        f"run {active_run_id} of pipeline {name!r} is still in progress; "
        "nudged it to move on, run again once it has finished"
    )


def _wait_and_report(settings: Settings, run_id: int, timeout: float) -> None:
    from db import pipelines as runs

    deadline = time.monotonic() + timeout
    with session_for(settings) as session, console.status(f"run {run_id}…"):
        while True:
            session.expire_all()
            run = runs.get_run(session, run_id)
            assert run is not None
            session.rollback()
            if run.finished_at is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    _print_run(run)
    if run.finished_at is None:
        raise fail(f"run {run_id} has not finished after {timeout:g}s; it goes on in the workers")


def _print_run(run: PipelineRun) -> None:
    from moa.pipelines import run_record

    record = run_record(run)
    console.print(
        f"run {run.id} {run.status}: {run.processed} processed, {run.skipped} skipped, "
        f"{run.failed} failed, {money(run.cost)}"
    )
    if run.error:
        console.print(f"[red]run failed[/]: {escape(run.error)}")
    for path, error in record["errors"].items():
        console.print(f"[red]failed[/] {escape(path)}: {escape(error)}")
    if run.index_path:
        console.print(f"index: {run.index_path}")


@pipelines_app.command("history")
def pipelines_history(name: str, limit: int = 20) -> None:
    """The runs of a pipeline, newest first."""
    from db import pipelines as runs

    with session_for(get_settings()) as session:
        found = runs.list_runs(session, name, limit)
    if not found:
        raise fail(f"pipeline {name!r} has no runs")
    table = Table(title=f"Runs of {name}")
    columns = ("run", "trigger", "status", "started", "took", "processed", "skipped", "failed")
    for column in (*columns, "cost", "jobs"):
        table.add_column(column, justify="right" if column not in ("trigger", "status") else "left")
    for run in found:
        took = ""
        if run.finished_at is not None:
            took = f"{(run.finished_at - run.created_at).total_seconds():.1f}s"
        jobs = ", ".join(str(j) for j in (run.map_job_id, run.reduce_job_id) if j is not None)
        table.add_row(
            str(run.id), run.trigger + (" --force" if run.force else ""), run.status,
            f"{run.created_at:%Y-%m-%d %H:%M:%S}", took, str(run.processed), str(run.skipped),
            str(run.failed), money(run.cost), jobs,
        )  # fmt: skip
    console.print(table)
