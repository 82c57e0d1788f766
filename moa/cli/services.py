"""Commands for the parts that run: up, down, status, db upgrade, worker, sim."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from moa.cli.common import fail
from moa.console import console
from moa.settings import get_settings, load_moa_config
from moa.stack import Stack

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(worker)
    app.command()(sim)
    app.add_typer(db_app, name="db")


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


def down() -> None:
    """Stop the worker pools, the local model and the embedded services."""
    settings = get_settings()
    stopped = Stack(settings).down(load_moa_config(settings))
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def status() -> None:
    """Show what is running."""
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


def worker(
    pool: Annotated[str, typer.Option(help="proposers | aggregators | control | all")] = "all",
    concurrency: Annotated[int | None, typer.Option(help="threads")] = None,
) -> None:
    """Run one worker pool in the foreground (threads pool: the work is I/O-bound)."""
    from workers.app import POOLS
    from workers.app import app as celery_app

    if pool not in POOLS:
        raise fail(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    settings = get_settings()
    threads = concurrency or {
        "proposers": settings.proposer_concurrency,
        "aggregators": settings.aggregator_concurrency,
        "control": settings.control_concurrency,
    }.get(pool, settings.proposer_concurrency + settings.aggregator_concurrency)
    celery_app.worker_main(
        [
            "worker", "--queues", ",".join(POOLS[pool]), "--pool", "threads",
            "--concurrency", str(threads), "--hostname", f"{pool}-{os.getpid()}@%h",
            "--loglevel", settings.log_level, "--without-gossip", "--without-mingle",
            *(["--task-events"] if settings.task_events else []),
        ]
    )  # fmt: skip


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
    config = SimConfig(
        latency_ms=latency_ms, jitter_ms=jitter_ms, tokens_per_s=tokens_per_s, fail_rate=fail_rate
    )
    serve(config, host, port)
