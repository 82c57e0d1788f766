"""What guards each provider call, on real workers and Redis: the response cache, context
fitting, the shared concurrency limit and the circuit breaker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from db.models import Item
from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import job_calls, questions, start_job


def test_identical_temperature_zero_calls_are_answered_from_the_cache(submit, wait_job, db, sim):
    before = sim.stats()["by_model"].get("sim-cache", 0)
    first = wait_job(submit([{"custom_id": "a", "prompt": "Cache me: what is 6*7?"}], "cached"))
    second = wait_job(submit([{"custom_id": "a", "prompt": "Cache me: what is 6*7?"}], "cached"))

    (paid,), (hit,) = job_calls(db, first.id), job_calls(db, second.id)
    assert (paid.cached, hit.cached) == (False, True)
    assert hit.output == paid.output and hit.cost == 0 < paid.cost
    assert [a["outcome"] for a in hit.attempts] == ["cached"]
    assert second.cost == 0
    assert sim.stats()["by_model"]["sim-cache"] == before + 1


def test_a_prompt_that_cannot_fit_fails_before_it_is_sent(submit, wait_job, db, sim):
    sent_before = sim.stats()["by_model"].get("sim-tiny", 0)
    job = wait_job(submit([{"custom_id": "long", "prompt": "word " * 200}], "tiny"))

    (call,) = job_calls(db, job.id)
    item = db.get(Item, call.item_id)
    assert (item.status, item.error_code) == ("failed", "context_too_long")
    assert call.status == "failed" and "exceeds the context window of 50" in call.error
    assert sim.stats()["by_model"].get("sim-tiny", 0) == sent_before  # nothing was sent


@pytest.fixture
def slow_sim():
    with SimServer(SimConfig(latency_ms=150)) as server:
        yield server


def limited_config(tmp_path: Path, sim: SimServer) -> Any:
    path = tmp_path / "limited.toml"
    path.write_text(
        f"""
[providers.slow]
base_url = "{sim.base_url}"
[models.limited]
provider = "slow"
model = "sim-limited"
max_concurrency = 5
[presets.limited]
aggregator = "limited"
[[presets.limited.layers]]
agents = [{{ model = "limited", samples = 4 }}]
""",
        encoding="utf-8",
    )
    return load_config(path)


def test_a_models_concurrency_limit_holds_across_worker_processes(
    services, workers, engine, slow_sim, wait_job, tmp_path
):
    # Two more proposer processes of 16 threads each: 40 threads could call at once.
    workers.start("proposers", name="proposers-a", concurrency=16)
    workers.start("proposers", name="proposers-b", concurrency=16)
    try:
        workers.wait_ready()
        job_id = start_job(
            engine, limited_config(tmp_path, slow_sim), "limited", questions(15, "c")
        )
        assert wait_job(job_id, timeout_s=120).completed == 15
    finally:  # later tests count on the session's own pools only
        workers.kill("proposers-a")
        workers.kill("proposers-b")
    peak = slow_sim.stats()["peak_in_flight"]["sim-limited"]
    assert peak <= 5
    assert peak >= 3  # the limit was actually pressed, so the check above means something


def test_an_open_circuit_makes_callers_wait_then_lets_one_probe_through(services, dead_port):
    from redis import Redis

    from pipeline.errors import ProviderUnavailable
    from pipeline.specs import ProviderSpec
    from workers.gate import Gate

    redis = Redis.from_url(services.redis_url)
    gate = Gate(redis, services.redis_url)
    spec = ProviderSpec(name=f"flaky-{dead_port}", base_url="http://x", breaker_threshold=3,
                        breaker_reset_s=60, timeout_s=5)  # fmt: skip
    error = ProviderUnavailable("HTTP 503")

    for _ in range(2):
        gate.failed(spec, error)
    assert gate.breaker_wait(spec) == 0  # still closed below the threshold
    gate.failed(spec, error)
    assert 55 < gate.breaker_wait(spec) <= 60  # open: callers wait it out
    redis.hset(f"moa:breaker:{spec.name}", "open_until", 1)  # the open period has passed
    assert gate.breaker_wait(spec) == 0  # half-open: one probe goes through
    assert gate.breaker_wait(spec) > 0  # and only one
    gate.succeeded(spec)
    assert gate.breaker_wait(spec) == 0  # closed again
    redis.close()
