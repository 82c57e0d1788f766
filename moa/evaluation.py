"""`moa eval`: an evaluation set through each preset as ordinary jobs (every call audited and
costed), the answers judged by a judge model (a job too), scored, stored and reported.

Order of work: turn 1 of every preset at once; then each later turn, whose messages carry
the same preset's earlier answers; then one judge job for every verdict; then the report.
The statistics, prompts and verdict parsing are pure (``pipeline.eval*``, ``pipeline.judging``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db import repo
from moa.jobs import JobOptions, Limits, create_job
from moa.settings import Settings
from moa.stack import Stack
from pipeline.errors import MoaError
from pipeline.evalreport import Evidence, Pair, summarize
from pipeline.evalsets import EvalItem, EvalSet, load_eval_set, read_baseline_answers
from pipeline.evalstats import BOOTSTRAP_RESAMPLES
from pipeline.exactmatch import is_correct
from pipeline.judging import (
    Answers,
    JudgeTask,
    Verdict,
    complete,
    parse_pairwise,
    parse_score,
    plan_judging,
    preference,
)
from pipeline.prompts import Message
from pipeline.specs import Config, PresetSpec, single_preset, with_presets

QUICK_SET = Path(__file__).with_name("data") / "eval_quick.jsonl"
QUICK_PRESETS = ("local-single", "local-self-moa")
QUICK_JUDGE = "local"


class EvalError(MoaError):
    """The evaluation cannot run as asked (a job failed, an unknown baseline, ...)."""


@dataclass(frozen=True)
class EvalRequest:
    data: Path
    presets: tuple[str, ...]
    judge: str  # a model name from moa.toml [models.*]
    baseline: str | None = None  # a preset, or a file of answers; None: the data's, else presets[0]
    limit: int | None = None
    seed: int = 0  # of the bootstrap
    judge_max_tokens: int = 256
    poll_s: float = 0.5


@dataclass(frozen=True)
class Baseline:
    name: str
    preset: str | None = None  # run as a preset like the others
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # given: file or data


@dataclass
class PresetRun:
    answers: Answers = field(default_factory=dict)
    jobs: list[int] = field(default_factory=list)
    cost: Decimal = Decimal(0)
    seconds: dict[str, float] = field(default_factory=dict)  # per item, every turn


def resolve_baseline(config: Config, request: EvalRequest, data: EvalSet) -> Baseline:
    choice = request.baseline
    if choice is not None and choice in config.presets:
        return Baseline(f"preset {choice}", preset=choice)
    if choice is not None:
        path = Path(choice)
        if not path.is_file():
            raise EvalError(f"--baseline {choice!r} is neither a preset nor a file")
        return Baseline(f"answers in {path.name}", answers=read_baseline_answers(path))
    if data.items and all(item.baseline for item in data.items):
        given = {item.id: item.baseline for item in data.items}
        return Baseline(f"the data's answers ({data.baseline_name or 'baseline'})", answers=given)
    return Baseline(f"preset {request.presets[0]}", preset=request.presets[0])


def judge_preset(config: Config, request: EvalRequest) -> PresetSpec:
    config.model(request.judge)  # an unknown judge model is a ConfigError now, not mid-run
    return single_preset(
        f"judge-{request.judge}", request.judge, temperature=0.0,
        max_tokens=request.judge_max_tokens, description="moa eval judge",
    )  # fmt: skip


class Evaluation:
    """One eval run from start to report; ``say`` hears what it is doing."""

    def __init__(
        self, settings: Settings, config: Config, request: EvalRequest,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.request = request
        self.say = say
        self.data = load_eval_set(request.data).limited(request.limit)
        if not self.data.items:
            raise EvalError("the evaluation set has no items")
        self.baseline = resolve_baseline(config, request, self.data)
        self.judge = judge_preset(config, request)
        self.config = with_presets(config, self.judge)
        names = [*request.presets, *([self.baseline.preset] if self.baseline.preset else [])]
        self.presets = list(dict.fromkeys(names))
        self._base: dict[str, tuple[str, ...]] = {}
        self.digest = self.data.digest()
        self._engine: Engine | None = None
        for name in self.presets:
            self.config.preset(name)  # unknown presets fail before anything runs

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> tuple[int, dict[str, Any]]:
        from db.engine import make_engine

        self._start_services()
        self._engine = make_engine(self.settings.effective_database_url, pool_size=1)
        try:
            return self._run()
        finally:
            self._engine.dispose()

    def _run(self) -> tuple[int, dict[str, Any]]:
        with self._session() as session:
            run_id = repo.create_eval_run(
                session, data_path=str(self.request.data.resolve()), data_hash=self.digest,
                config=self.snapshot(),
            ).id  # fmt: skip
            session.commit()
        try:
            report = self._evaluate(run_id)
        except BaseException as exc:
            with self._session() as session:
                repo.finish_eval_run(session, run_id, status="failed", error=str(exc) or repr(exc))
                session.commit()
            raise
        return run_id, report

    def _evaluate(self, run_id: int) -> dict[str, Any]:
        runs = self._answer_all(run_id)
        self._base = self._baseline_answers(runs)
        answers = {name: run.answers for name, run in runs.items()}
        tasks = plan_judging(self.data.items, answers, self._base, self.baseline.preset)
        self.say(f"judging: {len(tasks)} judge calls on {self.judge.aggregator.model}")
        judge_job, outputs = self._judge(tasks)
        self._record_jobs(run_id, runs, judge_job)
        rows = self._verdict_rows(tasks, outputs) + self._exact_rows(runs)
        report = self._report(run_id, runs, rows, judge_job)
        with self._session() as session:
            repo.add_eval_verdicts(session, run_id, rows)
            repo.finish_eval_run(session, run_id, status="completed", report=report)
            session.commit()
        return report

    def snapshot(self) -> dict[str, Any]:
        """What the run was made of: presets (models, temperatures), judge, data, seeds."""
        return {
            "presets": {name: self.config.snapshot(name) for name in self.presets},
            "judge": self.config.snapshot(self.judge.name),
            "baseline": {"name": self.baseline.name, "preset": self.baseline.preset},
            "data": {"path": str(self.request.data.resolve()), "name": self.data.name,
                     "items": len(self.data.items), "hash": self.digest,
                     "limit": self.request.limit},
            "seeds": {"bootstrap": self.request.seed, "sampling": None},
        }  # fmt: skip

    # --- answering ----------------------------------------------------------------------------

    def _answer_all(self, run_id: int) -> dict[str, PresetRun]:
        runs = {name: PresetRun() for name in self.presets}
        turns = max(len(item.turns) for item in self.data.items)
        for turn in range(1, turns + 1):
            jobs: dict[str, int] = {}
            for name, run in runs.items():
                rows = [self._row(item, run.answers, turn) for item in self.data.items]
                present = [row for row in rows if row is not None]
                if present:
                    jobs[name] = self._submit(name, present)
            self.say(f"turn {turn}: jobs {', '.join(f'{n}={j}' for n, j in jobs.items())}")
            self._wait(list(jobs.values()))
            for name, job_id in jobs.items():
                self._collect(runs[name], job_id, turn)
            self._record_jobs(run_id, runs, None)
        return runs

    def _row(self, item: EvalItem, answers: Answers, turn: int) -> dict[str, Any] | None:
        """The job row asking ``turn`` of ``item``, with this preset's earlier answers."""
        if turn > len(item.turns):
            return None
        earlier = complete(answers.get(item.id, []), turn - 1)
        if earlier is None:
            return None  # an earlier turn failed: nothing to continue
        messages: list[Message] = list(item.history)
        for index, answer in enumerate(earlier):
            messages += [Message(role="user", content=item.turns[index]),
                         Message(role="assistant", content=answer)]  # fmt: skip
        messages.append(Message(role="user", content=item.turns[turn - 1]))
        return {"custom_id": item.id, "messages": messages}

    def _collect(self, run: PresetRun, job_id: int, turn: int) -> None:
        with self._session() as session:
            job = repo.get_job(session, job_id)
            assert job is not None
            run.jobs.append(job_id)
            run.cost += job.cost
            for item in repo.iter_results(session, job_id):
                got = run.answers.setdefault(item.custom_id, [])
                got.extend([None] * (turn - 1 - len(got)))
                got.append(item.output if item.status == "completed" else None)
            for custom_id, seconds in repo.item_seconds(session, job_id).items():
                run.seconds[custom_id] = run.seconds.get(custom_id, 0.0) + seconds

    def _baseline_answers(self, runs: dict[str, PresetRun]) -> dict[str, tuple[str, ...]]:
        if self.baseline.preset is None:
            return self.baseline.answers
        found = {}
        for item in self.data.items:
            given = runs[self.baseline.preset].answers.get(item.id, [])
            done = complete(given, len(item.turns))
            if done is not None:
                found[item.id] = tuple(done)
        return found

    # --- judging ------------------------------------------------------------------------------

    def _judge(self, tasks: Sequence[JudgeTask]) -> tuple[int | None, dict[str, Any]]:
        if not tasks:
            return None, {}
        rows = [{"custom_id": f"j{i}", "messages": t.messages} for i, t in enumerate(tasks)]
        job_id = self._submit(self.judge.name, rows)
        self._wait([job_id])
        with self._session() as session:
            outputs = {item.custom_id: item for item in repo.iter_results(session, job_id)}
            session.expunge_all()
        return job_id, outputs

    def _verdict_rows(
        self, tasks: Sequence[JudgeTask], outputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        rows = []
        for index, task in enumerate(tasks):
            item = outputs.get(f"j{index}")
            text = item.output if item is not None and item.status == "completed" else None
            parse = parse_pairwise if task.kind == "pairwise" else parse_score
            verdict = parse(text) if text is not None else None
            failure = getattr(item, "error", None) or "no answer"
            problem = verdict.problem if verdict else f"judge call failed: {failure}"
            value = verdict.value if verdict else None
            rows.append({
                "preset": task.preset, "item": task.item, "kind": task.kind, "turn": task.turn,
                "position": task.position, "value": _text(value), "problem": problem,
                "judge_output": text, "judge_item_id": item.id if item is not None else None,
            })  # fmt: skip
        return rows

    def _exact_rows(self, runs: dict[str, PresetRun]) -> list[dict[str, Any]]:
        rows = []
        for name, run in runs.items():
            for item in self.data.items:
                if item.answer is None:
                    continue
                given = run.answers.get(item.id, [])
                last = given[len(item.turns) - 1] if len(given) >= len(item.turns) else None
                right = is_correct(last, item.answer, item.kind or "text")
                rows.append({
                    "preset": name, "item": item.id, "kind": "exact", "turn": len(item.turns),
                    "position": None, "value": "true" if right else "false",
                    "problem": None if last is not None else "no answer (the item failed)",
                    "judge_output": None, "judge_item_id": None,
                })  # fmt: skip
        return rows

    # --- the report ---------------------------------------------------------------------------

    def _report(self, run_id: int, runs: dict[str, PresetRun], rows: list[dict[str, Any]],
                judge_job: int | None) -> dict[str, Any]:  # fmt: skip
        judge_cost = Decimal(0)
        if judge_job is not None:
            with self._session() as session:
                job = repo.get_job(session, judge_job)
                judge_cost = job.cost if job is not None else Decimal(0)
        judge_model = self.config.model(self.judge.aggregator.model)
        return {
            "run_id": run_id,
            "data": self.snapshot()["data"],
            "judge": {"model": judge_model.name, "provider_model": judge_model.model,
                      "temperature": self.judge.aggregator.temperature,
                      "max_tokens": self.judge.aggregator.max_tokens, "job": judge_job},
            "baseline": {"name": self.baseline.name, "preset": self.baseline.preset},
            "presets": [summarize(self._evidence(name, run, rows), self.request.seed)
                        for name, run in runs.items()],
            "judge_cost": f"{judge_cost:f}",
            "bootstrap": {"seed": self.request.seed, "resamples": BOOTSTRAP_RESAMPLES},
            "notes": ["providers are sent no sampling seed: answers at temperature > 0 vary "
                      "between runs"],
        }  # fmt: skip

    def _evidence(self, name: str, run: PresetRun, rows: list[dict[str, Any]]) -> Evidence:
        spec = self.config.preset(name)
        models = sorted(f"{m} ({self.config.model(m).model})" for m in spec.model_names())
        mine = [row for row in rows if row["preset"] == name]
        by_item: dict[str, list[dict[str, Any]]] = {}  # the pairwise verdicts, per item
        for row in mine:
            if row["kind"] == "pairwise":
                by_item.setdefault(row["item"], []).append(row)
        evidence = Evidence(name, models, len(self.data.items), cost=run.cost,
                            is_baseline=name == self.baseline.preset)  # fmt: skip
        for item in self.data.items:
            given = complete(run.answers.get(item.id, []), len(item.turns))
            if given is None:
                continue
            evidence.answered += 1
            evidence.lengths.append(sum(len(a) for a in given))
            if item.id in run.seconds:
                evidence.latencies_s.append(run.seconds[item.id])
            pairwise = by_item.get(item.id, [])
            evidence.pairs.extend(_pairs(pairwise, item.id, given, self._base.get(item.id, ())))
        evidence.ratings = [_float(r["value"]) for r in mine if r["kind"] == "rating"]
        evidence.exact = [r["value"] == "true" for r in mine if r["kind"] == "exact"]
        return evidence

    # --- plumbing -----------------------------------------------------------------------------

    def _start_services(self) -> None:
        stack = Stack(self.settings)
        if self.settings.embedded_database or self.settings.embedded_redis:
            self.say("starting services…")
            stack.up()
        for name in [*self.presets, self.judge.name]:
            stack.ensure_local_model(self.config, self.config.preset(name))

    @contextmanager
    def _session(self) -> Iterator[Session]:
        from db.engine import make_sessionmaker

        assert self._engine is not None, "sessions exist only while the run runs"
        with make_sessionmaker(self._engine)() as session:
            yield session

    def _submit(self, preset: str, rows: list[dict[str, Any]]) -> int:
        from workers.tasks import dispatch

        limits = Limits(self.settings.max_items, self.settings.max_prompt_chars)
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        with self._session() as session:
            options = JobOptions(limits=limits, metadata={"eval": True})
            job_id = create_job(session, self.config, preset, lines, options).job.id
            session.commit()
        dispatch.delay(job_id)
        return job_id

    def _wait(self, job_ids: list[int]) -> None:
        """Poll until every job has ended; a job that did not complete stops the run."""
        with self._session() as session:
            while True:
                statuses = repo.job_statuses(session, job_ids)
                session.rollback()  # no snapshot held while we sleep
                if all(status in repo.JOB_ENDED for status in statuses.values()):
                    break
                time.sleep(self.request.poll_s)
        bad = {j: s for j, s in statuses.items() if s != "completed"}
        if bad:
            raise EvalError(f"job(s) did not complete: {bad} (see `moa jobs show`)")

    def _record_jobs(self, run_id: int, runs: dict[str, PresetRun], judge: int | None) -> None:
        jobs: dict[str, Any] = {name: run.jobs for name, run in runs.items()}
        if judge is not None:
            jobs["judge"] = [judge]
        with self._session() as session:
            repo.set_eval_jobs(session, run_id, jobs)
            session.commit()


def _pairs(
    rows: list[dict[str, Any]], item: str, given: list[str], base: Sequence[str]
) -> list[Pair]:
    first = second = None
    seen = False
    for row in rows:
        if row["kind"] != "pairwise" or row["item"] != item:
            continue
        seen = True
        pref = preference(_verdict(row["value"]), row["position"])
        if row["position"] == "A":
            first = pref
        else:
            second = pref
    if not seen:
        return []
    diff = sum(len(a) for a in given[: len(base)]) - sum(len(b) for b in base[: len(given)])
    return [Pair(first, second, float(diff))]


def _text(value: str | float | None) -> str | None:
    if isinstance(value, float):
        return f"{value:g}"
    return value


def _float(text: str | None) -> float | None:
    return float(text) if text is not None else None


def _verdict(text: str | None) -> Verdict:
    return Verdict(text)
