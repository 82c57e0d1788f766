"""The `moa` command line. Thin: it parses arguments and delegates."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.orm import Session

from moa.console import console, cost_table, jobs_table, money, trace_table
from moa.settings import Settings, get_settings, load_moa_config
from moa.stack import Stack
from pipeline.errors import MoaError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Mixture-of-Agents batch pipeline on Celery, Valkey and PostgreSQL.",
)
jobs_app = typer.Typer(no_args_is_help=True, help="List and inspect jobs.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")

DEMO_INPUT = Path(__file__).with_name("data") / "demo.jsonl"
FINAL = ("completed", "failed", "cancelled")
ConfigOption = Annotated[Path | None, typer.Option("--config", help="extra moa.toml")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    from db.engine import make_engine, make_sessionmaker

    engine = make_engine(settings.effective_database_url, pool_size=1)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


# --- services ---------------------------------------------------------------------------------


@app.command()
def up(
    local_model: Annotated[bool, typer.Option(help="also start the bundled local model")] = False,
) -> None:
    """Start the embedded services (when no URLs are set), migrate, start the worker pools."""
    settings = get_settings()
    stack = Stack(settings)
    with console.status("starting services…"):
        stack.up()
        if local_model:
            model = stack.local_model(load_moa_config(settings))
            if model is not None:
                model.start()
    status()


@app.command()
def down() -> None:
    """Stop the worker pools, the local model and the embedded services."""
    settings = get_settings()
    stopped = Stack(settings).down(load_moa_config(settings))
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status() -> None:
    """Show what is running."""
    from rich.table import Table

    settings = get_settings()
    table = Table(title=f"moa-batch services (MOA_HOME={settings.home})")
    for name in ("part", "state", "where"):
        table.add_column(name)
    for row in Stack(settings).status(load_moa_config(settings)):
        table.add_row(*row)
    console.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations."""
    from db.migrate import upgrade

    settings = get_settings()
    if settings.embedded_database:
        Stack(settings).postgres.start()
    upgrade(settings.effective_database_url)
    console.print("database is at the latest revision")


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="proposers | aggregators | control | all")] = "all",
    concurrency: Annotated[int | None, typer.Option(help="threads")] = None,
) -> None:
    """Run one worker pool in the foreground (threads pool: the work is I/O-bound)."""
    from workers.app import POOLS
    from workers.app import app as celery_app

    if pool not in POOLS:
        raise _fail(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    settings = get_settings()
    threads = concurrency or {
        "proposers": settings.proposer_concurrency,
        "aggregators": settings.aggregator_concurrency,
        "control": settings.control_concurrency,
    }.get(pool, settings.proposer_concurrency + settings.aggregator_concurrency)
    celery_app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(POOLS[pool]),
            "--pool",
            "threads",
            "--concurrency",
            str(threads),
            "--hostname",
            f"{pool}-{os.getpid()}@%h",
            "--loglevel",
            settings.log_level,
            "--task-events",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def sim(
    port: int = 8900,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    tokens_per_s: float = 0.0,
    fail_rate: float = 0.0,
    host: str = "127.0.0.1",
) -> None:
    """Run the simulated OpenAI-compatible provider on loopback."""
    from moa.simulator import SimConfig, serve

    console.print(f"simulator on http://{host}:{port}/v1")
    serve(
        SimConfig(
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            tokens_per_s=tokens_per_s,
            fail_rate=fail_rate,
        ),
        host,
        port,
    )


# --- jobs -------------------------------------------------------------------------------------


def submit(
    settings: Settings, input_path: Path, preset: str, extra: Path | None
) -> tuple[int, int]:
    """Create the job and start dispatching it; returns (job id, items)."""
    from moa.jobs import create_job
    from workers.tasks import dispatch

    config = load_moa_config(settings, extra)
    preset_spec = config.preset(preset)
    stack = Stack(settings)
    if settings.embedded_database or settings.embedded_redis:
        with console.status("starting services…"):
            stack.up()
    with console.status("starting the local model…"):
        stack.ensure_local_model(config, preset_spec)
    with _session(settings) as session, input_path.open("rb") as lines:
        job = create_job(session, config, preset, lines)
        job_id, total = job.id, job.total
        session.commit()
    dispatch.delay(job_id)
    return job_id, total


def wait(settings: Settings, job_id: int, total: int) -> None:
    from db import repo

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with _session(settings) as session, Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"job {job_id}", total=total, detail="")
        while True:
            session.expire_all()
            job = repo.get_job(session, job_id)
            assert job is not None
            detail = f"{job.status} · failed {job.failed} · {money(job.cost)}"
            progress.update(bar, completed=job.completed + job.failed, detail=detail)
            if job.status in FINAL:
                return
            time.sleep(0.25)


def write_results(settings: Settings, job_id: int, out: Path) -> int:
    from db import repo
    from moa.jobs import result_record

    count = 0
    with _session(settings) as session, out.open("w", encoding="utf-8") as handle:
        for item in repo.iter_results(session, job_id):
            handle.write(json.dumps(result_record(item), ensure_ascii=False) + "\n")
            count += 1
    return count


@app.command()
def run(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT.jsonl", exists=True, dir_okay=False)],
    preset: Annotated[str, typer.Option(help="preset name (see moa.toml)")] = "moa-lite",
    config: ConfigOption = None,
    out: Annotated[
        Path | None, typer.Option(help="results JSONL (default: INPUT.results.jsonl)")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="submit and return")] = False,
) -> None:
    """Run a JSONL batch through a MoA preset and write the results in input order."""
    settings = get_settings()
    try:
        job_id, total = submit(settings, input_path, preset, config)
    except MoaError as exc:
        raise _fail(str(exc)) from None
    console.print(f"job {job_id}: {total} items on preset {preset!r}")
    if no_wait:
        return
    wait(settings, job_id, total)
    target = out or input_path.with_suffix(".results.jsonl")
    count = write_results(settings, job_id, target)
    _summary(settings, job_id)
    console.print(f"wrote {count} results to {target}")


def _summary(settings: Settings, job_id: int) -> None:
    from db import repo

    with _session(settings) as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        console.print(cost_table(repo.cost_by_layer(session, job_id)))
        console.print(
            f"job {job.id} {job.status}: {job.completed} completed, {job.failed} failed, "
            f"{job.prompt_tokens + job.completion_tokens} tokens, {money(job.cost)}"
        )


@jobs_app.command("list")
def jobs_list(limit: int = 20) -> None:
    """The most recent jobs."""
    from db import repo

    settings = get_settings()
    with _session(settings) as session:
        console.print(jobs_table(repo.list_jobs(session, limit)))


@jobs_app.command("show")
def jobs_show(job_id: int) -> None:
    """A job's counts and its cost table."""
    from db import repo
    from moa.jobs import job_record

    settings = get_settings()
    with _session(settings) as session:
        job = repo.get_job(session, job_id)
        if job is None:
            raise _fail(f"no job {job_id}")
        console.print_json(json.dumps(job_record(job)))
    _summary(settings, job_id)


@app.command()
def trace(
    item_id: Annotated[int, typer.Argument(metavar="ITEM")],
    full: Annotated[bool, typer.Option(help="print whole outputs")] = False,
) -> None:
    """Every call of one item, layer by layer."""
    from db import repo

    settings = get_settings()
    with _session(settings) as session:
        loaded = repo.get_item_and_job(session, item_id)
        if loaded is None:
            raise _fail(f"no item {item_id}")
        item = loaded[0]
        console.print(trace_table(item, repo.item_calls(session, item_id), full))
        if item.output:
            console.print(Panel(item.output, title="answer"))


@app.command()
def demo(preset: str = "local-demo") -> None:
    """Start everything, run the bundled prompts on the local model, print answers and costs."""
    settings = get_settings()
    try:
        job_id, total = submit(settings, DEMO_INPUT, preset, None)
    except MoaError as exc:
        raise _fail(str(exc)) from None
    console.print(f"job {job_id}: {total} bundled prompts through preset {preset!r}")
    wait(settings, job_id, total)
    _print_answers(settings, job_id)
    _summary(settings, job_id)


def _print_answers(settings: Settings, job_id: int) -> None:
    from db import repo

    with _session(settings) as session:
        first = None
        for item in repo.iter_results(session, job_id):
            first = first or item.id
            question = item.messages[-1]["content"]
            body = item.output or f"[red]{item.error_code}: {item.error}[/]"
            console.print(Panel(body, title=f"{item.custom_id}: {question}", title_align="left"))
    if first is not None:
        console.print(f"every call of an item: moa trace {first}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
