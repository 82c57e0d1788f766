"""A cancel in the middle of each fault: the job ends cancelled with consistent counts, and
once it has settled nothing calls the provider for it again, not even the messages the
fault left unacknowledged when they are handed out a second time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import Item
from moa.jobs import cancel
from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import (
    MIXED,
    Services,
    WorkerPools,
    drained,
    job_calls,
    questions,
    redeliver_unacked,
    start_job,
    wait_for,
    wait_job_end,
)
from tests.faults.common import (
    CONFIG,
    ITEMS,
    client_reconnected,
    midway,
    pools_answer,
)


def kill_proposers(services: Services, workers: WorkerPools, engine: Engine) -> None:
    assert workers.kill("proposers") >= 1
    workers.start("proposers")
    workers.wait_ready()


def restart_valkey(services: Services, workers: WorkerPools, engine: Engine) -> None:
    assert services.valkey is not None, "this test restarts the embedded Valkey"
    services.valkey.stop()
    services.valkey.start()
    wait_for(client_reconnected, 30, "this process to reach Valkey again")
    revived: list[str] = []
    wait_for(lambda: pools_answer(workers, revived), 60, "every pool to answer a ping again")


def restart_postgres(services: Services, workers: WorkerPools, engine: Engine) -> None:
    assert services.postgres is not None, "this test restarts the embedded PostgreSQL"
    services.postgres.stop()
    services.postgres.start()
    engine.dispose()


def provider_storm(services: Services, workers: WorkerPools, engine: Engine) -> None:
    """The storm is the simulator's fault rate, raging from the start."""


FAULTS: dict[str, Callable[[Services, WorkerPools, Engine], None]] = {
    "proposer-kill": kill_proposers,
    "valkey-restart": restart_valkey,
    "postgres-restart": restart_postgres,
    "provider-storm": provider_storm,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_cancel_during_a_fault_ends_the_job_and_nothing_calls_the_provider_after(
    fault: str, services, workers, engine: Engine, tmp_path: Path, capsys
):
    storm = fault == "provider-storm"
    sim_config = SimConfig(latency_ms=200, fail_rate=0.4 if storm else 0.0, faults=MIXED,
                           retry_after_s=0.2, slow_first_byte_ms=1500, hang_s=3, seed=3)  # fmt: skip
    with SimServer(sim_config) as sim:
        path = tmp_path / "moa.toml"
        path.write_text(CONFIG.replace("SIM_URL", sim.base_url), encoding="utf-8")
        job_id = start_job(engine, load_config(path), "lite", questions(ITEMS, fault))
        midway(engine, job_id)
        FAULTS[fault](services, workers, engine)
        with Session(engine) as session:
            cancel(session, job_id)  # what `moa jobs cancel` and the API do
            session.commit()
        from workers.tasks import finalize

        finalize.delay(job_id)
        job = wait_job_end(engine, job_id, timeout_s=120)
        settled = sim.stats()["requests"]

        # Every message the fault left taken and unacknowledged is handed out again now (as
        # the visibility timeout would, later): each finds its item cancelled.
        redeliver_unacked(services.redis_url)
        wait_for(lambda: drained(services), 90, "every queued and taken message to be done")
        assert sim.stats()["requests"] == settled, (
            "a task called the provider after the cancel settled"
        )

    assert (job.status, job.reason) == ("cancelled", "cancelled_by_user")
    with Session(engine) as session:
        statuses = Counter(session.scalars(select(Item.status).where(Item.job_id == job_id)))
        calls = job_calls(session, job_id)
    assert job.completed + job.failed + job.cancelled == ITEMS
    counts = {"completed": job.completed, "failed": job.failed, "cancelled": job.cancelled}
    assert statuses == {status: n for status, n in counts.items() if n}
    assert job.completed >= 3 and job.cancelled > 0
    assert not [c for c in calls if c.status in ("running", "retrying", "pending")]
    assert len({(c.item_id, c.layer, c.slot) for c in calls}) == len(calls)
    assert job.cost == sum(c.cost for c in calls)
    with capsys.disabled():
        print(f"\ncancel during {fault}: {job.completed} completed, {job.failed} failed, "
              f"{job.cancelled} cancelled of {ITEMS}; {len(calls)} calls, "
              f"{settled} provider requests, none after the cancel settled")  # fmt: skip
