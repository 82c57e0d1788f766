"""Prometheus metrics, computed from the database at scrape time: the rows are the truth,
and any number of API processes then report the same figures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Call, Job

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(**values: Any) -> str:
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), "/").replace(chr(34), "")}"' for k, v in values.items()
    )
    return "{" + inner + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def exposition(session: Session) -> str:
    lines: list[str] = []
    jobs = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    lines += _family("moa_jobs", "gauge", "Jobs by status.",
                     (f"moa_jobs{_labels(status=s)} {n}" for s, n in jobs))  # fmt: skip
    calls = session.execute(
        select(
            Call.provider, Call.model, Call.status, func.count(),
            func.sum(Call.prompt_tokens), func.sum(Call.completion_tokens), func.sum(Call.cost),
        ).group_by(Call.provider, Call.model, Call.status)
    ).all()  # fmt: skip
    lines += _family("moa_calls_total", "counter", "LLM calls by provider, model and outcome.",
                     (f"moa_calls_total{_labels(provider=p, model=m, outcome=s)} {n}"
                      for p, m, s, n, *_ in calls))  # fmt: skip
    lines += _family("moa_tokens_total", "counter", "Tokens by provider, model and direction.",
                     _token_samples(calls))  # fmt: skip
    lines += _family("moa_cost_usd_total", "counter", "Money spent by provider and model.",
                     (f"moa_cost_usd_total{_labels(provider=p, model=m, outcome=s)} {float(c or 0)}"
                      for p, m, s, _, _, _, c in calls))  # fmt: skip
    lines += _latency(session)
    return "\n".join(lines) + "\n"


def _token_samples(calls: Iterable[Any]) -> Iterable[str]:
    for provider, model, status, _, prompt, completion, _ in calls:
        for kind, count in (("prompt", prompt), ("completion", completion)):
            labels = _labels(provider=provider, model=model, outcome=status, kind=kind)
            yield f"moa_tokens_total{labels} {count or 0}"


def _latency(session: Session) -> list[str]:
    """A histogram of call latency per provider and model, bucketed in SQL."""
    buckets = [func.count().filter(Call.latency_ms <= b * 1000) for b in LATENCY_BUCKETS_S]
    rows = session.execute(
        select(Call.provider, Call.model, func.count(), func.sum(Call.latency_ms), *buckets)
        .where(Call.latency_ms.is_not(None))
        .group_by(Call.provider, Call.model)
    ).all()
    samples: list[str] = []
    name = "moa_call_latency_seconds"
    for provider, model, count, total_ms, *counts in rows:
        for bound, n in (*zip(LATENCY_BUCKETS_S, counts, strict=True), ("+Inf", count)):
            samples.append(f"{name}_bucket{_labels(provider=provider, model=model, le=bound)} {n}")
        labels = _labels(provider=provider, model=model)
        samples.append(f"{name}_sum{labels} {(total_ms or 0) / 1000}")
        samples.append(f"{name}_count{labels} {count}")
    return _family("moa_call_latency_seconds", "histogram", "LLM call latency.", samples)
