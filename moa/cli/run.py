"""Running batches: `moa run` (with --estimate), `moa demo`, `moa presets`."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from moa.cli.common import ConfigOption, fail, session_for
from moa.console import console, cost_table
from moa.export import money
from moa.jobs import JobOptions, Limits, create_job
from moa.settings import Settings, get_settings, load_moa_config
from moa.stack import Stack
from pipeline.errors import MoaError
from pipeline.specs import Config

DEMO_INPUT = Path(__file__).resolve().parent.parent / "data" / "demo.jsonl"


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(demo)
    app.command()(presets)


def _budget(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not an amount") from None
    if not (amount.is_finite() and amount > 0):
        raise typer.BadParameter(f"--max-cost must be a positive amount, not {value!r}")
    return amount


def run(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT.jsonl", exists=True, dir_okay=False)],
    preset: Annotated[str, typer.Option(help="preset name (see `moa presets`)")] = "moa-lite",
    config: ConfigOption = None,
    out: Annotated[
        Path | None, typer.Option(help="results JSONL (default: INPUT.results.jsonl)")
    ] = None,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="print tokens and cost, spend nothing")
    ] = False,
    max_cost: Annotated[
        str | None, typer.Option(help="stop the job when it has spent this much")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="run the valid lines")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="a retried submit returns the same job")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="submit and return")] = False,
) -> None:
    """Run a JSONL batch through a MoA preset and write the results in input order."""
    settings = get_settings()
    try:
        moa_config = load_moa_config(settings, config)
        if estimate:
            _print_estimate(moa_config, preset, input_path)
            return
        options = JobOptions(
            idempotency_key=idempotency_key, budget=_budget(max_cost), skip_invalid=skip_invalid,
            limits=_limits(settings),
        )  # fmt: skip
        job_id, total = submit(settings, moa_config, input_path, preset, options)
    except MoaError as exc:
        raise fail(str(exc)) from None
    if no_wait:
        return
    wait(settings, job_id, total)
    target = out or input_path.with_suffix(".results.jsonl")
    count = write_results(settings, job_id, target)
    summary(settings, job_id)
    console.print(f"wrote {count} results to {target}")


def _limits(settings: Settings) -> Limits:
    return Limits(max_items=settings.max_items, max_prompt_chars=settings.max_prompt_chars)


def submit(
    settings: Settings, config: Config, input_path: Path, preset: str, options: JobOptions
) -> tuple[int, int]:
    """Create the job and start dispatching it; returns (job id, items)."""
    from workers.tasks import dispatch

    preset_spec = config.preset(preset)
    stack = Stack(settings)
    if settings.embedded_database or settings.embedded_redis:
        with console.status("starting services…"):
            stack.up()
    with console.status("starting the local model…"):
        stack.ensure_local_model(config, preset_spec)
    with session_for(settings) as session, input_path.open("rb") as lines:
        submitted = create_job(session, config, preset, lines, options)
        job_id, total = submitted.job.id, submitted.job.total
        session.commit()
    for error in submitted.skipped:
        console.print(f"[yellow]skipped[/] {escape(str(error))}")  # the line's own text
    if submitted.created:
        dispatch.delay(job_id)
        console.print(f"job {job_id}: {total} items on preset {preset!r}")
    else:
        console.print(f"job {job_id} already exists for this idempotency key")
    return job_id, total


def _print_estimate(config: Config, preset: str, input_path: Path) -> None:
    from pipeline.estimate import estimate_job, total
    from pipeline.inputs import InputError, LineError, read_rows
    from pipeline.plan import Plan
    from pipeline.tokens import prompt_tokens

    spec = config.preset(preset)
    model = config.model(spec.aggregator.model).model
    items, tokens, errors = 0, 0, []
    with input_path.open("rb") as lines:
        for row in read_rows(lines):
            if isinstance(row, LineError):
                errors.append(row)
            else:
                items, tokens = items + 1, tokens + prompt_tokens(row.messages, model)
    if errors:
        raise InputError(errors)
    lines_ = estimate_job(Plan(spec), config, items, tokens)
    table = Table(
        title=f"Estimate for {items} items on {preset!r} (upper bound: every answer at max_tokens)"
    )
    for name in ("layer", "role", "model", "calls", "prompt tok", "completion tok", "cost"):
        table.add_column(name, justify="left" if name in ("role", "model") else "right")
    for line in lines_:
        counts = (line.calls, line.prompt_tokens, line.completion_tokens)
        table.add_row(str(line.layer), line.role, line.model, *map(str, counts), money(line.cost))
    prompt, completion, cost = total(lines_)
    table.add_section()
    table.add_row("", "total", "", "", str(prompt), str(completion), money(cost))
    console.print(table)


def wait(settings: Settings, job_id: int, total: int) -> None:
    """A progress bar until the job ends: done, failed, where items are, ETA, cost so far."""
    from db import repo

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(),
    )  # fmt: skip
    progress_bar = Progress(*columns, console=console, refresh_per_second=4)
    with session_for(settings) as session, progress_bar as progress:
        bar = progress.add_task(f"job {job_id}", total=total, detail="")
        while True:
            session.expire_all()
            job = repo.get_job(session, job_id)
            assert job is not None
            mix = " ".join(
                f"L{layer}:{n}" for layer, n in sorted(repo.layer_mix(session, job_id).items())
            )
            detail = (f"{job.status} · failed {job.failed} · {mix or 'no items in flight'} · "
                      f"{money(job.cost)}")  # fmt: skip
            done = job.completed + job.failed + job.cancelled
            progress.update(bar, completed=done, detail=detail)
            session.rollback()  # end the read transaction: no snapshot held while we sleep
            if job.status in repo.JOB_ENDED:
                return
            time.sleep(0.5)


def write_results(settings: Settings, job_id: int, out: Path) -> int:
    from db import repo
    from moa.export import write_jsonl
    from moa.jobs import result_record

    with session_for(settings) as session, out.open("w", encoding="utf-8") as handle:
        return write_jsonl((result_record(i) for i in repo.iter_results(session, job_id)), handle)


def summary(settings: Settings, job_id: int) -> None:
    from db import repo

    with session_for(settings) as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        console.print(cost_table(repo.cost_by_layer(session, job_id)))
        reason = f" ({job.reason})" if job.reason else ""
        console.print(
            f"job {job.id} {job.status}{reason}: {job.completed} completed, {job.failed} failed, "
            f"{job.cancelled} cancelled, {job.prompt_tokens + job.completion_tokens} tokens, "
            f"{money(job.cost)}"
        )


def demo(preset: str = "local-demo") -> None:
    """Start everything, run the bundled prompts on the local model, print answers and costs."""
    settings = get_settings()
    try:
        config = load_moa_config(settings)
        job_id, total = submit(settings, config, DEMO_INPUT, preset, JobOptions())
    except MoaError as exc:
        raise fail(str(exc)) from None
    wait(settings, job_id, total)
    _print_answers(settings, job_id)
    summary(settings, job_id)


def _print_answers(settings: Settings, job_id: int) -> None:
    from db import repo

    with session_for(settings) as session:
        first = None
        for item in repo.iter_results(session, job_id):
            first = first or item.id
            question = item.messages[-1]["content"]
            body = item.output or f"[red]{item.error_code}: {item.error}[/]"
            console.print(Panel(body, title=f"{item.custom_id}: {question}", title_align="left"))
    if first is not None:
        console.print(f"every call of an item: moa trace {first}")


def presets(config: ConfigOption = None) -> None:
    """The presets you can run, with the calls each makes per item and where they come from."""
    from pipeline.plan import Plan

    moa_config = load_moa_config(get_settings(), config)
    table = Table(title="Presets", show_lines=True)
    for name in ("preset", "shape", "calls/item", "description"):
        table.add_column(name)
    for name, spec in sorted(moa_config.presets.items()):
        plan = Plan(spec)
        shape = " → ".join([*(f"{len(layer.agents)}x" for layer in spec.layers), "agg"])
        if spec.window:
            shape += f" (window {spec.window})"
        table.add_row(name, shape, str(plan.calls_per_item), spec.description)
    console.print(table)
