"""Worker processes SIGKILLed mid-job, with a short visibility timeout: the messages the
dead worker had taken come back to the queue by themselves once a replacement runs, and the
job finishes without an operator. At-least-once delivery never bills a call twice.

A message the killed worker had popped from its queue but not yet recorded as taken is lost
(kombu's Redis transport does the two in separate steps); beat's sweeper restarts the item
it belonged to, as it does in production."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import MIXED, WorkerPools, questions, start_job, wait_job_end
from tests.faults.common import (
    AGGREGATOR_THREADS,
    CONFIG,
    ITEMS,
    KEYS,
    PROPOSER_THREADS,
    assert_answered_once,
    midway,
    sim_count,
)

SHORT_VISIBILITY_S = 8  # a dead worker's messages are handed out again after this
STORM = """timeout_s = 1
max_attempts = 15
retry_base_s = 0.05
retry_cap_s = 0.5
breaker_reset_s = 0.5
"""


@pytest.fixture
def replaced(workers: WorkerPools) -> Iterator[list[str]]:
    """Pools a test killed and replaced with short-visibility ones; given back as they were
    (a short visibility timeout would hand out other tests' long waits twice)."""
    pools: list[str] = []
    yield pools
    for pool in pools:
        workers.kill(pool)
        workers.start(pool)
    if pools:
        workers.wait_ready()


def kill_and_replace(workers: WorkerPools, pool: str, replaced: list[str]) -> None:
    assert workers.kill(pool) >= 1  # SIGKILL: its tasks die mid-call, unacknowledged
    workers.start(pool, MOA_VISIBILITY_TIMEOUT_S=str(SHORT_VISIBILITY_S))
    replaced.append(pool)
    workers.wait_ready()


@pytest.fixture
def storm_sim() -> Iterator[SimServer]:
    config = SimConfig(fail_rate=0.4, faults=MIXED, retry_after_s=0.2, latency_ms=100,
                       slow_first_byte_ms=1500, hang_s=3, seed=5)  # fmt: skip
    with SimServer(config) as server:
        yield server


def test_a_proposer_pool_killed_in_a_provider_storm_is_replaced_and_the_job_finishes(
    engine: Engine, workers, replaced, beat, storm_sim, tmp_path: Path, capsys
):
    path = tmp_path / "moa.toml"
    lines = CONFIG.replace("SIM_URL", storm_sim.base_url).splitlines()
    text = "\n".join(STORM if line.startswith("timeout_s") else line for line in lines)
    path.write_text(text, encoding="utf-8")
    job_id = start_job(engine, load_config(path), "lite", questions(ITEMS, "storm"))
    midway(engine, job_id)

    kill_and_replace(workers, "proposers", replaced)  # no resume: redelivery does it

    job = wait_job_end(engine, job_id, timeout_s=240)
    calls = assert_answered_once(engine, job, "storm")
    stats = storm_sim.stats()
    answered = stats["requests"] - stats["failures_injected"]
    # The provider answered each call once, plus the calls the kill cut off in flight.
    assert len(calls) <= answered <= len(calls) + PROPOSER_THREADS
    outcomes = Counter(a["outcome"] for c in calls for a in c.attempts)
    assert outcomes["ok"] == len(calls)
    assert {"rate_limited", "unavailable", "bad_response", "timeout"} <= set(outcomes)
    # An attempt cut off by the kill is counted and has no log entry; every other one has.
    lost = sum(c.attempt for c in calls) - sum(len(c.attempts) for c in calls)
    assert 0 <= lost <= PROPOSER_THREADS
    with capsys.disabled():
        print(f"\nproposer kill in a 40% storm: {job.completed}/{ITEMS} items, {len(calls)} "
              f"calls (one per key), {stats['requests']} requests, "
              f"{stats['failures_injected']} faults injected, {answered} answers, "
              f"{lost} attempts cut off by the kill")  # fmt: skip


def test_a_killed_aggregator_pool_is_replaced_and_each_layer_closes_once(
    engine: Engine, workers, replaced, beat, start, slow_sim, capsys
):
    job_id = start("agg")
    midway(engine, job_id)  # items finish in the aggregator pool: it is busy now

    kill_and_replace(workers, "aggregators", replaced)

    job = wait_job_end(engine, job_id, timeout_s=180)
    calls = assert_answered_once(engine, job, "agg")
    assert len(calls) == ITEMS * len(KEYS)
    # Each layer was closed once: the proposers were asked exactly once per proposer call,
    # and an aggregation was sent again only when the kill cut it off in flight.
    proposals, aggregations = (sim_count(slow_sim, m) for m in ("sim-proposer", "sim-aggregator"))
    assert proposals == ITEMS * 6
    assert ITEMS <= aggregations <= ITEMS + AGGREGATOR_THREADS
    with capsys.disabled():
        print(f"\naggregator kill: {job.completed}/{ITEMS} items, {len(calls)} calls, "
              f"{proposals} proposer requests, {aggregations} aggregator requests")  # fmt: skip
