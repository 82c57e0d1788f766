"""Benchmarks of our own machinery (`moa bench`): what the pipeline adds on top of the
providers' latency, against the floor of Python and the ideal bound of the schedule.

Every run starts an isolated stack (its own MOA_HOME, ports, worker pools) and a
simulator subprocess, so figures are never mixed with other work on the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from db.repo import JOB_ENDED
from moa.services import Managed, free_port, port_open, wait_until
from moa.stack import WORKER_POOLS


@dataclass
class Stack:
    """An isolated `moa up` with a simulator, for one benchmark run."""

    home: Path
    sim_latency_ms: float = 0.0
    sim_jitter_ms: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    sim_port: int = 0
    sim: subprocess.Popen[bytes] | None = None

    local_model: bool = False

    def start(self, extra_env: dict[str, str]) -> None:
        ports = {k: str(free_port()) for k in ("PG", "REDIS", "API", "FLOWER")}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MOA_")}
        self.env.update({f"MOA_{k}_PORT": v for k, v in ports.items()}, MOA_HOME=str(self.home))
        self.env.update(extra_env)
        self.sim_port = free_port()
        self.sim = subprocess.Popen(
            [sys.executable, "-m", "moa.cli", "sim", "--port", str(self.sim_port),
             "--latency-ms", str(self.sim_latency_ms), "--jitter-ms", str(self.sim_jitter_ms)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        up = ["up", "--local-model"] if self.local_model else ["up"]
        started = subprocess.run([sys.executable, "-m", "moa.cli", *up], env=self.env,
                                 capture_output=True, text=True)  # fmt: skip
        if started.returncode:
            raise RuntimeError(f"moa {' '.join(up)} failed: {started.stderr[-2000:]}")
        wait_until(lambda: port_open(self.sim_port), 30, "the simulator")

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "moa.cli", "down"], env=self.env, capture_output=True)
        if self.sim is not None:
            self.sim.terminate()
            self.sim.wait(timeout=10)

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.env['MOA_PG_PORT']}/moa"

    def processes(self) -> dict[int, str]:
        """Every process the pipeline runs on, by role (the simulator apart)."""
        found: dict[int, str] = {}
        for name in (*(f"worker-{pool}" for pool in WORKER_POOLS), "valkey"):
            pid = Managed(name, self.home).pid()
            if pid:
                found[pid] = name
        postmaster = int((self.home / "postgres" / "postmaster.pid").read_text().split()[0])
        for proc in [psutil.Process(postmaster), *psutil.Process(postmaster).children()]:
            found[proc.pid] = "postgres"
        if self.sim is not None:
            found[self.sim.pid] = "simulator"
        found[os.getpid()] = "submit+poll"
        return found


@contextmanager
def stack(
    latency_ms: float = 0.0, jitter_ms: float = 0.0, local_model: bool = False, **env: str
) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="moa-bench-") as home:
        running = Stack(Path(home), latency_ms, jitter_ms, local_model=local_model)
        try:
            running.start({f"MOA_{k.upper()}": v for k, v in env.items()})
            yield running
        finally:
            running.stop()


def bench_config(
    path: Path, sim_port: int, layers: int, proposers: int, concurrency: int = 0
) -> Path:
    layer = f'[[presets.bench.layers]]\nagents = [{{ model = "bench", samples = {proposers} }}]\n'
    path.write_text(
        f'[providers.benchsim]\nbase_url = "http://127.0.0.1:{sim_port}/v1"\ntimeout_s = 30\n'
        f'[models.bench]\nprovider = "benchsim"\nmodel = "bench-model"\n'
        f'input_per_1m = "1"\noutput_per_1m = "2"\nmax_concurrency = {concurrency}\n'
        f'[presets.bench]\naggregator = "bench"\n' + layer * layers,
        encoding="utf-8",
    )
    return path


@dataclass
class Run:
    items: int
    calls: int
    wall_s: float
    cpu_s: dict[str, float]
    peak_rss_mb: dict[str, float]
    item_latency_s: list[float]
    figures: JobFigures

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s

    @property
    def our_cpu_ms_per_call(self) -> float:
        ours = sum(v for k, v in self.cpu_s.items() if k != "simulator")
        return 1000 * ours / self.calls


def run_job(
    running: Stack, config_path: Path, items: int, warmup: int = 10, prompts: Path | None = None
) -> Run:
    """Submit ``items`` prompts to the bench preset, wait for the end, measure every process.

    A small job runs first, so process start-up (imports, the tokenizer's tables, connection
    pools) is not counted as per-call overhead."""
    if warmup:
        run_job(running, config_path, warmup, warmup=0, prompts=prompts)
    redis_url = f"redis://127.0.0.1:{running.env['MOA_REDIS_PORT']}/0"
    os.environ.update(MOA_DATABASE_URL=running.database_url, MOA_REDIS_URL=redis_url)
    from moa.settings import get_settings

    get_settings.cache_clear()
    procs = running.processes()
    before = _cpu(procs)
    started = time.perf_counter()
    # Submitted from a fresh process: a Celery app is bound to one broker for its lifetime.
    submit = subprocess.run(
        [sys.executable, "-m", "moa.bench", str(config_path), str(items),
         *([str(prompts)] if prompts else [])],
        env={**running.env, "MOA_DATABASE_URL": running.database_url,
             "MOA_REDIS_URL": os.environ["MOA_REDIS_URL"]},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    job_id = int(submit.stdout.strip().splitlines()[-1])
    peak = _wait(job_id, procs)
    wall = time.perf_counter() - started
    after = _cpu(procs)
    cpu = {role: after.get(role, 0) - before.get(role, 0) for role in after}
    figures = job_figures(job_id)
    return Run(items, figures.calls, wall, cpu, peak, figures.latency_s, figures)


def submit(config_path: Path, items: int, prompts: Path | None = None) -> int:
    from db.engine import make_engine, make_sessionmaker
    from moa.jobs import JobOptions, Limits, create_job
    from moa.settings import get_settings, load_moa_config
    from workers.tasks import dispatch

    settings = get_settings()
    config = load_moa_config(settings, config_path)
    texts = prompt_texts(prompts, items)
    lines = (json.dumps({"custom_id": f"b{i}", "prompt": text}) for i, text in enumerate(texts))
    engine = make_engine(settings.effective_database_url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        job_id = create_job(session, config, "bench", lines, JobOptions(limits=Limits())).job.id
        session.commit()
    engine.dispose()
    dispatch.delay(job_id)
    return job_id


def prompt_texts(prompts: Path | None, items: int) -> list[str]:
    """``items`` prompts: the lines of a file, repeated as needed, or numbered questions."""
    if prompts is None:
        return [f"benchmark question {i}" for i in range(items)]
    lines = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [lines[i % len(lines)] for i in range(items)]


def _cpu(procs: dict[int, str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for pid, role in procs.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def _wait(job_id: int, procs: dict[int, str]) -> dict[str, float]:
    """Poll the job to its end, sampling each role's resident memory (MB) as it goes."""
    from sqlalchemy import create_engine, text

    from moa.settings import get_settings

    engine = create_engine(get_settings().effective_database_url)
    peak: dict[str, float] = {}
    try:
        while True:
            with engine.connect() as conn:
                status = conn.execute(
                    text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}
                ).scalar()
            for pid, role in procs.items():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 1e6
                except psutil.NoSuchProcess:
                    continue
                key = role if role != "postgres" else "postgres (largest backend)"
                peak[key] = max(peak.get(key, 0.0), rss)
            if status in JOB_ENDED:
                return peak
            time.sleep(0.5)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class JobFigures:
    calls: int
    latency_s: list[float]  # per item, from its start (dispatch) to its answer
    since_submit_s: list[float]  # per item, from the job's creation to its answer
    call_s: float  # the calls' own latencies, summed: the provider's share of the work
    completion_tokens: int
    job_s: float  # from the job's creation to its end


JOB_FIGURES = """
SELECT (SELECT count(*) FROM calls c JOIN items i ON i.id = c.item_id WHERE i.job_id = :id),
       (SELECT coalesce(sum(c.latency_ms), 0) FROM calls c JOIN items i ON i.id = c.item_id
         WHERE i.job_id = :id),
       (SELECT coalesce(sum(c.completion_tokens), 0) FROM calls c
          JOIN items i ON i.id = c.item_id WHERE i.job_id = :id),
       (SELECT extract(epoch FROM finished_at - created_at) FROM jobs WHERE id = :id)
"""
ITEM_TIMES = """
SELECT extract(epoch FROM finished_at - started_at), extract(epoch FROM finished_at - created_at)
  FROM items WHERE job_id = :id AND finished_at IS NOT NULL
"""


def job_figures(job_id: int) -> JobFigures:
    from sqlalchemy import create_engine, text

    from moa.settings import get_settings

    engine = create_engine(get_settings().effective_database_url)
    with engine.connect() as conn:
        calls, call_ms, tokens, job_s = conn.execute(text(JOB_FIGURES), {"id": job_id}).one()
        times = conn.execute(text(ITEM_TIMES), {"id": job_id}).all()
    engine.dispose()
    return JobFigures(
        int(calls), [float(t[0]) for t in times], [float(t[1]) for t in times],
        float(call_ms) / 1000, int(tokens), float(job_s or 0),
    )  # fmt: skip


def asyncio_floor(sim_port: int, calls: int, concurrency: int = 32) -> tuple[float, float]:
    """The same number of calls from one asyncio loop with httpx: (wall s, CPU ms per call)."""

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with gate:
                    body = {
                        "model": "bench-model",
                        "messages": [{"role": "user", "content": f"q{i}"}],
                    }
                    response = await client.post(
                        f"http://127.0.0.1:{sim_port}/v1/chat/completions", json=body
                    )
                    response.json()

            await asyncio.gather(*(one(i) for i in range(calls)))

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - wall, 1000 * (time.process_time() - cpu) / calls


LOCAL_QUESTIONS = """What is the capital of France?
How many legs does a spider have?
Which planet is the largest in our solar system?
What gas do plants take in from the air?
At what temperature does water boil at sea level?
Who wrote Romeo and Juliet?
What is the largest ocean on Earth?
How many days are in a leap year?
What is the chemical symbol for gold?
Which animal is known as the king of the jungle?
How many continents are there?
What is the freezing point of water in Celsius?
Which organ pumps blood through the body?
What is the tallest mountain in the world?
How many minutes are in an hour?
What color do you get by mixing blue and yellow?
Which metal is liquid at room temperature?
What is the square root of 81?
Which language has the most native speakers?
What do bees make?
"""


def local_config(path: Path, max_tokens: int = 64) -> Path:
    """One call an item to the bundled model, deterministic, so both sides see the same text.
    (Temperature 0 turns the response cache on: run each prompt once per stack.)"""
    path.write_text(
        "[presets.bench]\n"
        f'aggregator = {{ model = "local", temperature = 0.0, max_tokens = {max_tokens} }}\n',
        encoding="utf-8",
    )
    return path


def local_direct(config_path: Path, prompts: list[str]) -> tuple[float, int]:
    """The pipeline's own requests sent straight to llama.cpp, one after another (its server
    answers one at a time): (wall s, completion tokens)."""
    from moa.settings import get_settings, load_moa_config
    from pipeline.prompts import Message
    from pipeline.providers import make_provider

    config = load_moa_config(get_settings(), config_path)
    call = config.preset("bench").aggregator
    model = config.models[call.model]
    spec = config.providers[model.provider]
    tokens = 0
    with httpx.Client(timeout=spec.timeout_s) as client:
        provider = make_provider(spec, client)
        started = time.perf_counter()
        for prompt in prompts:
            messages: list[Message] = [{"role": "user", "content": prompt}]
            body = provider.body(model.model, messages, call.temperature, call.max_tokens,
                                 stream=False)  # fmt: skip
            response = client.post(spec.base_url.rstrip("/") + provider.path, json=body)
            response.raise_for_status()
            tokens += int(response.json()["usage"]["completion_tokens"])
        return time.perf_counter() - started, tokens


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(run: Run) -> dict[str, Any]:
    latencies = run.item_latency_s
    per_call = {k: round(1000 * v / run.calls, 2) for k, v in sorted(run.cpu_s.items())}
    return {
        "items": run.items,
        "calls": run.calls,
        "wall_s": round(run.wall_s, 2),
        "calls_per_s": round(run.calls_per_s, 1),
        "our_cpu_ms_per_call": round(run.our_cpu_ms_per_call, 2),
        "cpu_ms_per_call": per_call,
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(run.peak_rss_mb.items())},
        "item_latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "item_latency_p95_s": round(percentile(latencies, 0.95), 3),
    }


if __name__ == "__main__":  # the submitting process of run_job
    print(submit(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]) if sys.argv[3:] else None))
