"""What the fault tests share: the job they run, how they wait, and what they check."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import Call, Item, Job
from moa.jobs import UNFINISHED, reopen
from moa.simulator import SimServer
from tests.conftest import WorkerPools, job_calls, wait_for

CONFIG = """
[providers.slow]
base_url = "SIM_URL"
timeout_s = 2  # a call's lease is 2 x 2 + 5 s: a call a crash left running is retaken soon

[models.proposer]
provider = "slow"
model = "sim-proposer"
input_per_1m = "1.00"
output_per_1m = "2.00"

[models.aggregator]
provider = "slow"
model = "sim-aggregator"
input_per_1m = "3.00"
output_per_1m = "6.00"

[presets.lite]
aggregator = "aggregator"
[[presets.lite.layers]]
agents = [{ model = "proposer", samples = 3 }]
[[presets.lite.layers]]
agents = [{ model = "proposer", samples = 3 }]
"""
ITEMS = 30
KEYS = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]  # (layer, slot) of a lite item
PROPOSER_THREADS = 8  # MOA_PROPOSER_CONCURRENCY of the test pools
AGGREGATOR_THREADS = 4  # MOA_AGGREGATOR_CONCURRENCY of the test pools


def final_answer(question: str) -> str:
    """How the simulator's aggregator ends its answer: the question, and the three
    proposals of the last layer it was shown."""
    return f"answer to: {question} (saw 3 numbered answers)"


def job_row(engine: Engine, job_id: int) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def midway(engine: Engine, job_id: int) -> Job:
    """Wait until a few items are answered; the job must still be running."""
    job = wait_for(
        lambda: (j := job_row(engine, job_id)).completed >= 3 and j, 60, "three items to finish"
    )
    assert job.status == "in_progress" and job.completed < ITEMS, "the fault must come mid-job"
    return job


def sim_count(sim: SimServer, model: str) -> int:
    return int(sim.stats()["by_model"].get(model, 0))


def report(capsys: pytest.CaptureFixture[str], fault: str, sim: SimServer) -> None:
    """The provider's side, for the log: a call cut off by the fault is sent again."""
    proposals, aggregations = (sim_count(sim, m) for m in ("sim-proposer", "sim-aggregator"))
    with capsys.disabled():
        print(f"\n{fault}: the provider answered {proposals} proposer requests for "
              f"{ITEMS * 6} calls, {aggregations} aggregator requests for {ITEMS}")  # fmt: skip


def resume(engine: Engine, job_id: int) -> int:
    """What an operator runs after an incident: `moa jobs resume` and `moa jobs retry`."""
    from workers.tasks import dispatch

    with Session(engine) as session:
        reopened = reopen(session, job_id, (*UNFINISHED, "failed"), None)
        session.commit()
    dispatch.delay(job_id)
    return reopened


def assert_answered_once(engine: Engine, job: Job, prefix: str) -> list[Call]:
    """Every item completed with its own answer, each (item, layer, slot) one call, and the
    job's cost the sum of its calls'."""
    assert (job.status, job.completed, job.failed, job.cancelled) == ("completed", ITEMS, 0, 0)
    with Session(engine) as session:
        items = list(session.scalars(select(Item).where(Item.job_id == job.id)))
        calls = job_calls(session, job.id)
    assert len(items) == ITEMS and all(i.status == "completed" for i in items)
    for item in items:
        question = item.messages[-1]["content"]
        assert question.startswith(f"{prefix} question ")
        assert item.output and item.output.endswith(final_answer(question))
    keys = Counter((c.item_id, c.layer, c.slot) for c in calls)
    assert set(keys.values()) == {1}  # no duplicate call
    assert set(keys) == {(i.id, layer, slot) for i in items for layer, slot in KEYS}
    assert all(c.status == "succeeded" and c.cost > 0 for c in calls)
    assert job.cost == sum(c.cost for c in calls)
    return calls


def client_reconnected() -> bool:
    """This process's pooled broker connection died with the server: its first use fails."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.app import app

    try:
        app.control.ping(timeout=0.2)
    except RedisConnectionError:
        return False
    return True


def pools_answer(workers: WorkerPools, revived: list[str]) -> bool:
    """Every pool answers a ping, reconnected by itself. Now and then a worker meets an
    "Unrecoverable error" in kombu while it gives its unacknowledged messages back on the
    lost connection, and exits: as a supervisor would (compose's restart policy), start
    that pool again."""
    for name, proc in list(workers.procs.items()):
        if proc.poll() is not None:
            del workers.procs[name]
            workers.start(name.split("-", 1)[0], name=name)  # names are POOL or POOL-SUFFIX
            revived.append(name)
    return workers.all_answer()
