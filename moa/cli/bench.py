"""`moa bench`: overhead, efficiency and scaling of the pipeline, written to a Markdown
report with PNG plots (docs/benchmarks.md by default)."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from moa.console import console

DOCS = Path("docs")


def register(app: typer.Typer) -> None:
    app.command()(bench)


def bench(
    out: Annotated[Path, typer.Option(help="the report; plots go beside it")] = DOCS
    / "benchmarks.md",
    items: Annotated[int, typer.Option(help="items of the overhead run")] = 200,
    sizes: Annotated[str, typer.Option(help="job sizes of the scaling run")] = "100,1000,10000",
    local: Annotated[
        bool, typer.Option(help="compare the bundled model through the pipeline and direct")
    ] = True,
) -> None:
    """Measure what our machinery adds per LLM call, against Python's floor and the ideal
    schedule, and how time and memory grow with the job size."""
    from moa import bench as b

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        results["overhead"] = _overhead(b, tmp, items)
        results["efficiency"] = _efficiency(b, tmp)
        results["single_item"] = _single_item(b, tmp)
        if local:
            results["local_model"] = _local_model(b, tmp)
        results["scaling"] = [_scale(b, tmp, int(n)) for n in sizes.split(",")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    _plots(results, out.parent)
    out.write_text(_report(results), encoding="utf-8")
    console.print(f"wrote {out} and its plots")


def _overhead(b: Any, tmp: Path, items: int) -> dict[str, Any]:
    runs = {}
    for label, events in (("task events on (Flower)", "true"), ("task events off", "false")):
        with b.stack(task_events=events) as running:
            config = b.bench_config(tmp / "overhead.toml", running.sim_port, layers=2, proposers=3)
            run = b.run_job(running, config, items)
            runs[label] = b.summary(run)
            cpu = runs[label]["our_cpu_ms_per_call"]
            console.print(f"overhead ({label}): {cpu} ms CPU per call")
            floor_wall, floor_cpu = b.asyncio_floor(running.sim_port, run.calls)
    runs["asyncio + httpx floor"] = {
        "calls": run.calls,
        "wall_s": round(floor_wall, 2),
        "our_cpu_ms_per_call": round(floor_cpu, 2),
    }
    return runs


def _efficiency(b: Any, tmp: Path, latency_ms: float = 500, jitter_ms: float = 100,
                cap: int = 8, items: int = 100) -> dict[str, Any]:  # fmt: skip
    with b.stack(latency_ms, jitter_ms) as running:
        config = b.bench_config(
            tmp / "eff.toml", running.sim_port, layers=2, proposers=3, concurrency=cap
        )
        run = b.run_job(running, config, items)
    mean_call_s = run.figures.call_s / run.calls  # as measured by the workers, HTTP included
    # No schedule beats C calls always in flight, nor one item's three calls in sequence.
    critical = 3 * mean_call_s
    ideal = max(run.figures.call_s / cap, critical)
    makespan = run.figures.job_s  # the job's own span: no process start-up in it
    result: dict[str, Any] = b.summary(run) | {
        "latency_ms": latency_ms, "jitter_ms": jitter_ms, "provider_concurrency": cap,
        "mean_call_s": round(mean_call_s, 3), "makespan_s": round(makespan, 2),
        "ideal_makespan_s": round(ideal, 2), "makespan_vs_ideal": round(makespan / ideal, 3),
        "critical_path_s": round(critical, 3),
        "latencies": [round(v, 3) for v in run.item_latency_s],
    }  # fmt: skip
    console.print(f"efficiency: makespan {makespan:.1f}s vs ideal {ideal:.1f}s")
    return result


def _single_item(b: Any, tmp: Path, latency_ms: float = 500, runs: int = 5) -> dict[str, Any]:
    """One item alone in the system, again and again: its latency against the critical path
    (three calls in sequence), the target being at most 50 ms of ours per layer."""
    with b.stack(latency_ms) as running:
        config = b.bench_config(tmp / "one.toml", running.sim_port, layers=2, proposers=3)
        b.run_job(running, config, 5, warmup=0)
        figures = [b.run_job(running, config, 1, warmup=0).figures for _ in range(runs)]
    critical = 3 * latency_ms / 1000
    started = statistics.median(f.latency_s[0] for f in figures)
    submitted = statistics.median(f.since_submit_s[0] for f in figures)
    result = {
        "latency_ms": latency_ms, "runs": runs, "critical_path_s": critical,
        "from_start_s": round(started, 3), "from_submit_s": round(submitted, 3),
        "ours_per_layer_ms": round(1000 * (submitted - critical) / 3, 1),
    }  # fmt: skip
    console.print(f"single item: {submitted:.3f}s from submission (critical path {critical}s)")
    return result


def _local_model(b: Any, tmp: Path) -> dict[str, Any]:
    """The bundled model through the whole pipeline, then the same requests sent straight to
    llama.cpp: what our machinery costs when the provider shares the machine's two cores."""
    prompts = tmp / "questions.txt"
    prompts.write_text(b.LOCAL_QUESTIONS, encoding="utf-8")
    lines = b.prompt_texts(prompts, len(b.LOCAL_QUESTIONS.splitlines()))
    with b.stack(local_model=True) as running:
        config = b.local_config(tmp / "local.toml")
        b.run_job(running, config, 2, warmup=0)  # other prompts: loads the weights, warms up
        run = b.run_job(running, config, len(lines), warmup=0, prompts=prompts)
        direct_s, direct_tokens = b.local_direct(config, lines)
    piped_s, piped_tokens = run.figures.job_s, run.figures.completion_tokens
    result: dict[str, Any] = {
        "prompts": len(lines),
        "pipeline": {"wall_s": round(piped_s, 2), "completion_tokens": piped_tokens,
                     "tokens_per_s": round(piped_tokens / piped_s, 1)},
        "direct": {"wall_s": round(direct_s, 2), "completion_tokens": direct_tokens,
                   "tokens_per_s": round(direct_tokens / direct_s, 1)},
    }  # fmt: skip
    console.print(f"local model: {result['pipeline']['tokens_per_s']} tokens/s through the "
                  f"pipeline, {result['direct']['tokens_per_s']} direct")  # fmt: skip
    return result


def _scale(b: Any, tmp: Path, items: int) -> dict[str, Any]:
    with b.stack() as running:
        config = b.bench_config(tmp / "scale.toml", running.sim_port, layers=1, proposers=3)
        result: dict[str, Any] = b.summary(b.run_job(running, config, items))
    console.print(f"scaling: {items} items in {result['wall_s']}s")
    return result


def _plots(results: dict[str, Any], where: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [k for k in results["overhead"] if "cpu_ms_per_call" in results["overhead"][k]]
    roles = sorted(
        {r for k in labels for r in results["overhead"][k]["cpu_ms_per_call"]} - {"simulator"}
    )
    bottom = [0.0] * len(labels)
    for role in roles:
        values = [results["overhead"][k]["cpu_ms_per_call"].get(role, 0) for k in labels]
        ax.bar(labels, values, bottom=bottom, label=role)
        bottom = [x + y for x, y in zip(bottom, values, strict=True)]
    floor = results["overhead"]["asyncio + httpx floor"]["our_cpu_ms_per_call"]
    ax.axhline(floor, color="black", linestyle="--", label=f"asyncio+httpx floor ({floor} ms)")
    ax.axhline(5, color="red", linestyle=":", label="target (5 ms)")
    ax.set_ylabel("CPU ms per LLM call (all processes)")
    ax.set_title("Orchestration overhead at zero provider latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(where / "bench-overhead.png", dpi=110)
    plt.close(fig)

    eff = results["efficiency"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(eff["latencies"], bins=20, color="tab:blue")
    ax.axvline(eff["critical_path_s"], color="red", linestyle="--", label="critical path (3 calls)")
    ax.set_xlabel("item latency (s)")
    ax.set_ylabel("items")
    cap = eff["provider_concurrency"]
    ax.set_title(f"Item latency at {eff['latency_ms']:.0f} ms a call, provider concurrency {cap}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(where / "bench-latency.png", dpi=110)
    plt.close(fig)

    scale = results["scaling"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    sizes = [r["items"] for r in scale]
    left.plot(sizes, [r["wall_s"] for r in scale], marker="o")
    left.set_xscale("log"), left.set_yscale("log")
    (
        left.set_xlabel("items"),
        left.set_ylabel("wall time (s)"),
        left.set_title("Time grows with the job"),
    )
    for role in sorted(scale[0]["peak_rss_mb"]):
        right.plot(sizes, [r["peak_rss_mb"].get(role, 0) for r in scale], marker="o", label=role)
    right.set_xscale("log")
    (
        right.set_xlabel("items"),
        right.set_ylabel("peak RSS (MB)"),
        right.set_title("Memory per process"),
    )
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(where / "bench-scaling.png", dpi=110)
    plt.close(fig)
    if "local_model" in results:
        _local_plot(plt, results["local_model"], where)


def _local_plot(plt: Any, local: dict[str, Any], where: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3))
    paths = ["direct", "pipeline"]
    ax.bar(paths, [local[p]["tokens_per_s"] for p in paths], color=["tab:gray", "tab:blue"])
    ax.set_ylabel("completion tokens/s")
    ax.set_title("gemma-3-270m on llama.cpp, 2 cores")
    fig.tight_layout()
    fig.savefig(where / "bench-local.png", dpi=110)
    plt.close(fig)


def _report(results: dict[str, Any]) -> str:
    over, eff, scale = results["overhead"], results["efficiency"], results["scaling"]
    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `moa bench` (about ten minutes on 2 cores). Every run starts its own",
        "stack (embedded PostgreSQL and Valkey, the three worker pools) and a simulator process,",
        "runs a 10-item warm-up job, then measures; CPU is read from each process (`psutil`),",
        "the simulator's own apart.",
        "",
        "## Overhead: CPU per LLM call, all our processes",
        "",
        "Zero provider latency, 2 layers x 3 proposers + aggregator (7 calls an item).",
        "",
        "| run | calls | wall s | calls/s | our CPU ms/call | by process (ms/call) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, r in over.items():
        parts = ", ".join(f"{k} {v}" for k, v in r.get("cpu_ms_per_call", {}).items())
        rate, cpu = r.get("calls_per_s", ""), r["our_cpu_ms_per_call"]
        lines.append(f"| {label} | {r['calls']} | {r['wall_s']} | {rate} | {cpu} | {parts} |")
    lines += [
        "",
        "![overhead](bench-overhead.png)",
        "",
        *_efficiency_section(eff),
        *_single_section(results["single_item"]),
        *(_local_section(results["local_model"]) if "local_model" in results else []),
        *_scaling(scale),
    ]
    return "\n".join(lines)


def _efficiency_section(eff: dict[str, Any]) -> list[str]:
    setting = (
        f"Simulator at {eff['latency_ms']:.0f} ms +- {eff['jitter_ms']:.0f} ms a call, the model "
        f"capped at {eff['provider_concurrency']} calls in flight (a limit shared through Redis), "
        f"{eff['items']} items."
    )
    row = (
        f"| {eff['makespan_s']} | {eff['ideal_makespan_s']} | {eff['makespan_vs_ideal']} | "
        f"{eff['item_latency_p50_s']} | {eff['item_latency_p95_s']} | {eff['critical_path_s']} |"
    )
    return [
        "## Efficiency against the ideal schedule",
        "",
        setting,
        "The ideal bound is the calls' own latencies (as the workers measured them) summed and",
        "divided by the cap, or one item's three calls in sequence if longer; the makespan is",
        "the job's span from creation to its end.",
        "",
        "| makespan s | ideal bound s | ratio | item p50 s | item p95 s | critical path s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        row,
        "",
        "![latency](bench-latency.png)",
        "",
    ]


def _single_section(one: dict[str, Any]) -> list[str]:
    return [
        "## One item alone",
        "",
        f"Simulator at {one['latency_ms']:.0f} ms a call, no jitter, no cap; {one['runs']} jobs "
        "of one item each (2 layers x 3 proposers + aggregator), medians.",
        "",
        "| critical path s | from dispatch s | from submission s | ours per layer ms |",
        "| ---: | ---: | ---: | ---: |",
        f"| {one['critical_path_s']} | {one['from_start_s']} | {one['from_submit_s']} | "
        f"{one['ours_per_layer_ms']} |",
        "",
    ]


def _local_section(local: dict[str, Any]) -> list[str]:
    piped, direct = local["pipeline"], local["direct"]
    return [
        "## The bundled local model: through the pipeline and direct",
        "",
        f"{local['prompts']} questions, one call each (temperature 0, at most 64 tokens), to",
        "gemma-3-270m on llama.cpp sharing the 2 cores with everything else; then the same",
        "requests sent straight to llama.cpp, one after another.",
        "",
        "| path | wall s | completion tokens | tokens/s |",
        "| --- | ---: | ---: | ---: |",
        f"| pipeline | {piped['wall_s']} | {piped['completion_tokens']} | "
        f"{piped['tokens_per_s']} |",
        f"| direct | {direct['wall_s']} | {direct['completion_tokens']} | "
        f"{direct['tokens_per_s']} |",
        "",
        "![local model](bench-local.png)",
        "",
    ]


def _scaling(scale: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Scaling",
        "",
        "1 layer x 3 proposers + aggregator (4 calls an item), zero latency.",
        "",
        "| items | calls | wall s | calls/s | peak RSS MB by process |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for r in scale:
        rss = ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb"].items())
        lines.append(
            f"| {r['items']} | {r['calls']} | {r['wall_s']} | {r['calls_per_s']} | {rss} |"
        )
    return [*lines, "", "![scaling](bench-scaling.png)", ""]
