"""`moa eval`: answer quality of presets against a baseline, with the cost of each point;
`moa eval show RUN` prints a stored run again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markdown import Markdown

from moa.cli.common import ConfigOption, fail, session_for
from moa.console import console
from moa.settings import get_settings, load_moa_config
from pipeline.errors import MoaError

eval_app = typer.Typer(
    help="Answer quality of presets (win rate, LC win rate, MT-Bench, exact match) with cost."
)

PLOT = "quality_vs_cost.png"


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="eval set: AlpacaEval JSON, MT-Bench "
                                              "question.jsonl or our JSONL")] = None,
    presets: Annotated[str | None, typer.Option(help="comma-separated presets")] = None,
    judge: Annotated[str | None, typer.Option(help="judge model: a name from moa.toml")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="a preset or a JSONL of answers (default: the data's own, else the first preset)"
    )] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="the bundled set on the bundled local model, offline"
    )] = False,
    judge_max_tokens: Annotated[int, typer.Option(help="the judge's reply budget")] = 256,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="directory for report.md, report.json and the plot (default ./moa-eval-RUN)"
    )] = None,
    config: ConfigOption = None,
) -> None:  # fmt: skip
    """Run an eval set through presets as ordinary jobs, judge the answers, report."""
    if ctx.invoked_subcommand is not None:
        return
    from moa.evaluation import QUICK_JUDGE, QUICK_PRESETS, QUICK_SET, EvalRequest, Evaluation

    if quick:
        data = data or QUICK_SET
        presets = presets or ",".join(QUICK_PRESETS)
        judge = judge or QUICK_JUDGE
        baseline = baseline or QUICK_PRESETS[0]
        judge_max_tokens = min(judge_max_tokens, 24)
    if data is None or presets is None or judge is None:
        raise fail("give --data, --presets and --judge (or --quick)")
    request = EvalRequest(
        data=data, presets=tuple(p.strip() for p in presets.split(",") if p.strip()),
        judge=judge, baseline=baseline, limit=limit, seed=seed, judge_max_tokens=judge_max_tokens,
    )  # fmt: skip
    settings = get_settings()
    try:
        evaluation = Evaluation(settings, load_moa_config(settings, config), request, console.print)
        run_id, report = evaluation.run()
    except MoaError as exc:
        raise fail(str(exc)) from None
    _write(report, out or Path(f"moa-eval-{run_id}"))


def _write(report: dict[str, Any], where: Path) -> None:
    from pipeline.evalreport import render_markdown

    where.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    plotted = plot(report, where / PLOT)
    if plotted:
        markdown += f"\n![quality versus cost]({PLOT})\n"
    (where / "report.md").write_text(markdown, encoding="utf-8")
    (where / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    console.print(Markdown(markdown))
    console.print(f"wrote {where / 'report.md'}, report.json" + (f" and {PLOT}" if plotted else ""))


@eval_app.command("show")
def show(run_id: int) -> None:
    """A stored eval run: presets, models, temperatures, seeds, data hash, jobs, report."""
    from db import repo
    from pipeline.evalreport import render_markdown

    with session_for(get_settings()) as session:
        run = repo.get_eval_run(session, run_id)
        if run is None:
            raise fail(f"no eval run {run_id}")
        console.print(
            f"eval run {run.id}: {run.status}, started {run.created_at:%Y-%m-%d %H:%M:%S}"
        )
        console.print(Markdown(_config_markdown(run.config, run.jobs)))
        if run.report:
            console.print(Markdown(render_markdown(run.report)))
        if run.error:
            console.print(f"[red]error:[/] {run.error}")


def _config_markdown(config: dict[str, Any], jobs: dict[str, Any]) -> str:
    data = config["data"]
    lines = [
        f"Data `{data['path']}` ({data['items']} items, sha256 `{data['hash']}`); "
        f"bootstrap seed {config['seeds']['bootstrap']}, sampling seed "
        f"{config['seeds']['sampling'] or 'none'}; baseline {config['baseline']['name']}.",
        "",
        "| preset | calls | models (temperature, max_tokens) | jobs |",
        "|---|---:|---|---|",
    ]
    for name, snap in [*config["presets"].items(), ("judge", config["judge"])]:
        agents = _agents(snap["preset"])
        job_ids = ", ".join(str(j) for j in jobs.get(name, [])) or "-"
        label = snap["preset"]["name"]
        lines.append(
            f"| `{label}` | {len(agents)} | {', '.join(sorted(set(agents)))} | {job_ids} |"
        )
    return "\n".join(lines)


def _agents(preset: dict[str, Any]) -> list[str]:
    found = [a for layer in preset["layers"] for a in layer["agents"]] + [preset["aggregator"]]
    return [f"{a['model']} (t={a['temperature']}, {a['max_tokens']})" for a in found]


def plot(report: dict[str, Any], path: Path) -> bool:
    """Quality against cost per item, one panel per measure the run has, like the cost figure
    of the MoA paper (Wang et al. 2024, Fig. 5). False if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no plot[/]")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, label) for key, label in _MEASURES
              if any(row[key] is not None for row in report["presets"])]  # fmt: skip
    panels = panels or [("mean_length", "mean length (chars)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for row in report["presets"]:
            if row[key] is None:
                continue
            cost = float(row["cost_per_item"] or 0)
            ax.scatter(cost, row[key])
            ax.annotate(row["preset"], (cost, row[key]), textcoords="offset points", xytext=(5, 5))
        ax.set_xlim(left=0)
        ax.set_xlabel("cost per item (USD)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"moa eval run {report['run_id']}: quality vs cost (judge {report['judge']['model']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


_MEASURES = (
    ("lc_win_rate", "LC win rate (%)"),
    ("mt_score", "MT-Bench score (1-10)"),
    ("exact_accuracy", "exact match (%)"),
)
