"""The `moa` command line. Thin: it parses arguments and delegates."""

from __future__ import annotations

import typer

from moa.cli import bench, eval, jobs, pipelines, run, services

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Mixture-of-Agents batch pipeline on Celery, Valkey and PostgreSQL.",
)
services.register(app)
run.register(app)
jobs.register(app)
bench.register(app)
pipelines.register(app)
eval.register(app)


def main() -> None:
    app()
