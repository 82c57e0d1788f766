"""Commands for the parts that run: up, down, status, db upgrade, worker, sim."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from moa.cli.common import ConfigOption, fail, session_for
from moa.console import console
from moa.settings import get_settings, load_moa_config
from moa.stack import Stack
from pipeline.errors import MoaError

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


keys_app = typer.Typer(no_args_is_help=True, help="API keys.")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(worker)
    app.command()(api)
    app.command()(flower)
    app.command()(beat)
    app.command()(sim)
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="the tenant the key acts for")]) -> None:
    """Create an API key. It is printed once and only its hash is stored."""
    from db.keys import create_key

    with session_for(get_settings()) as session:
        key = create_key(session, tenant)
        session.commit()
    console.print(f"API key for tenant {tenant!r} (shown once, keep it safe):")
    print(key)


def api(
    host: Annotated[str | None, typer.Option(help="default: MOA_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: MOA_API_PORT")] = None,
) -> None:
    """Serve the HTTP API (batch jobs, OpenAI-compatible endpoint, health, metrics)."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "api.app:create_app", factory=True, host=host or settings.api_host,
        port=port or settings.api_port, log_level="warning",
    )  # fmt: skip


def flower(
    host: Annotated[str | None, typer.Option(help="default: MOA_FLOWER_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: MOA_FLOWER_PORT")] = None,
) -> None:
    """Serve Flower, Celery's monitor, with basic auth on."""
    from moa.stack import flower_credentials
    from workers.app import app as celery_app

    settings = get_settings()
    user, password, _ = flower_credentials(settings)
    address = host or settings.flower_host
    celery_app.start(
        [
            "flower",
            f"--port={port or settings.flower_port}",
            f"--address={address}",
            f"--basic-auth={user}:{password}",
            "--persistent=False",
        ]
    )


def beat(config: ConfigOption = None) -> None:
    """Run Celery beat: it starts the pipelines of moa.toml on their schedules."""
    from workers.app import app as celery_app
    from workers.beat import beat_schedule

    settings = get_settings()
    try:
        moa_config = load_moa_config(settings, config)
    except MoaError as exc:
        raise fail(str(exc)) from None
    # Workers read the same file when a tick arrives: the user's file, or ours.
    path = (config or settings.config_path).resolve()
    # The app's own entries (the sweeper of stalled items) stay beside the pipelines'.
    celery_app.conf.beat_schedule = {
        **celery_app.conf.beat_schedule,
        **beat_schedule(moa_config, path),
    }
    schedule = settings.home / "beat-schedule"
    settings.home.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", f"--schedule={schedule}", f"--loglevel={settings.log_level}"])


def up(
    local_model: Annotated[bool, typer.Option(help="also start the bundled local model")] = False,
) -> None:
    """Start the embedded services (when no URLs are set), migrate, start the worker pools."""
    from moa.stack import flower_credentials

    settings = get_settings()
    stack = Stack(settings)
    user, password, made = flower_credentials(settings)  # before Flower starts and reads them
    with console.status("starting services…"):
        stack.up()
        if local_model:
            model = stack.local_model(load_moa_config(settings))
            if model is not None:
                model.start()
    status()
    if made:  # shown this once; they stay in MOA_HOME/flower.credentials
        console.print(f"Flower login: user {user}, password {password}")


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
