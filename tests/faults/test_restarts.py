"""Faults mid-job on real parts: Valkey and PostgreSQL stopped and started again on their
port and data, the aggregator pool SIGKILLed, and two tenants submitting the same custom_ids
at once. Whatever breaks, every item is answered once and no call is recorded twice."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import Call, Item, Job
from moa.jobs import UNFINISHED, JobOptions, create_job, reopen
from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import Services, WorkerPools, questions, start_job, wait_for

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
AGGREGATOR_THREADS = 4  # MOA_AGGREGATOR_CONCURRENCY of the test pools


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    """A simulator of its own per test, so its request counts are this test's alone."""
    with SimServer(SimConfig(latency_ms=200)) as server:
        yield server


@pytest.fixture
def start(
    engine: Engine, workers: WorkerPools, slow_sim: SimServer, tmp_path: Path
) -> Callable[[str], int]:
    path = tmp_path / "moa.toml"
    path.write_text(CONFIG.replace("SIM_URL", slow_sim.base_url), encoding="utf-8")
    config = load_config(path)

    def _start(prefix: str) -> int:
        return start_job(engine, config, "lite", questions(ITEMS, prefix))

    return _start


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
    stats = httpx.get(f"http://127.0.0.1:{sim.port}/_sim/stats").json()
    return int(stats["by_model"].get(model, 0))


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
        query = select(Call).join(Item, Item.id == Call.item_id).where(Item.job_id == job.id)
        calls = list(session.scalars(query))
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


def queues_empty(redis_url: str) -> bool:
    from workers.app import AGGREGATE_QUEUE, CONTROL_QUEUE, PROPOSE_QUEUE

    with Redis.from_url(redis_url) as redis:
        return not any(redis.llen(q) for q in (PROPOSE_QUEUE, AGGREGATE_QUEUE, CONTROL_QUEUE))


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
    from workers.app import app

    for name, proc in list(workers.procs.items()):
        if proc.poll() is not None:
            del workers.procs[name]
            workers.start(name.split("-", 1)[0], name=name)  # names are POOL or POOL-SUFFIX
            revived.append(name)
    pids = {str(proc.pid) for proc in workers.procs.values()}
    replies = app.control.ping(timeout=0.5) or []
    seen = {name.split("@")[0].rsplit("-", 1)[-1] for reply in replies for name in reply}
    return seen >= pids


GHOST_AFTER_S = 10.0  # 5 x the provider timeout: no task begun without a broker runs so long


def busy(services: Services, workers: WorkerPools, back_at: float) -> str | None:
    """What still moves, or None: nothing queued, and no worker runs, holds or schedules a
    task, so nothing more will happen by itself (a message Valkey still counts as
    unacknowledged only comes back after the visibility timeout, an hour).

    A task that ran while its worker had no broker, and could not store its result, stays
    listed as active by its worker for good: one begun before every worker was connected
    again (``back_at``) and still listed well after is such a ghost, not work in progress."""
    from workers.app import app

    def running(task: dict[str, Any]) -> bool:
        began = task.get("time_start") or time.time()
        return bool(began >= back_at or time.time() < back_at + GHOST_AFTER_S)

    if not queues_empty(services.redis_url):
        return "messages queued"
    expected = len(workers.procs)
    inspect = app.control.inspect(timeout=1.0, limit=expected)
    active = inspect.active() or {}
    if len(active) < expected:
        return f"active: {len(active)} of {expected} workers replied"
    tasks = [(t.get("name"), t.get("args")) for ts in active.values() for t in ts if running(t)]
    if tasks:
        return f"active: {tasks}"
    for method in (inspect.reserved, inspect.scheduled):
        replies = method() or {}
        if len(replies) < expected or any(replies.values()):
            return f"{method.__name__}: {replies}"
    return None if queues_empty(services.redis_url) else "messages queued"


def wait_idle(services: Services, workers: WorkerPools, back_at: float) -> None:
    seen = [0, ""]

    def twice() -> bool:  # two looks in a row: nothing slipped between them
        reason = busy(services, workers, back_at)
        seen[0], seen[1] = (0, reason) if reason else (seen[0] + 1, "")
        return seen[0] >= 2

    try:
        wait_for(twice, 90, "the workers to go idle")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen[1]}") from None


def test_a_valkey_restart_mid_job_then_a_resume_answers_every_item_once(
    services, workers, engine, start, slow_sim, capsys
):
    valkey = services.valkey
    assert valkey is not None, "this test restarts the embedded Valkey; unset MOA_TEST_REDIS_URL"
    job_id = start("valkey")
    midway(engine, job_id)

    valkey.stop()  # SIGTERM: the append-only file is flushed; the queues survive the restart
    valkey.start()  # same port, same data directory
    wait_for(client_reconnected, 30, "this process to reach Valkey again")
    revived: list[str] = []
    wait_for(lambda: pools_answer(workers, revived), 60, "every pool to answer a ping again")
    # Tasks that were running when the broker went away meet a closed connection (the
    # gate, the chord counter, the errback's publish): their item fails ("internal_error"),
    # or stays in progress, its message counted unacknowledged. Wait until nothing moves.
    wait_idle(services, workers, back_at=time.time())
    seen = job_row(engine, job_id)
    with capsys.disabled():
        print(f"\nvalkey restart, by itself: {seen.status}, {seen.completed} completed, "
              f"{seen.failed} failed, {ITEMS - seen.completed - seen.failed} stuck; "
              f"pools that exited and were started again: {revived or 'none'}")  # fmt: skip
    if (seen.status, seen.completed) != ("completed", ITEMS):
        assert resume(engine, job_id) > 0

    job = wait_for(
        lambda: (j := job_row(engine, job_id)).status in ("completed", "cancelled") and j,
        120, "the job to finish",
    )  # fmt: skip
    calls = assert_answered_once(engine, job, "valkey")
    assert len(calls) == ITEMS * len(KEYS)
    report(capsys, "valkey restart", slow_sim)


def test_a_postgres_restart_mid_job_is_retried_by_the_tasks_themselves(
    services, workers, engine, start, slow_sim, capsys
):
    postgres = services.postgres
    assert postgres is not None, (
        "this test restarts the embedded PostgreSQL; unset MOA_TEST_DATABASE_URL"
    )
    job_id = start("pg")
    midway(engine, job_id)

    postgres.stop()  # fast shutdown: every open connection is cut, in the middle of tasks
    postgres.start()  # same port, same data directory
    engine.dispose()  # this process's pooled connections are dead too

    # No resume: a task that met the broken connection retried with backoff and redid its
    # work; the keyed calls and compare-and-set moves keep that from doubling anything.
    job = wait_for(
        lambda: (j := job_row(engine, job_id)).status in ("completed", "cancelled") and j,
        120, "the job to finish",
    )  # fmt: skip
    calls = assert_answered_once(engine, job, "pg")
    assert len(calls) == ITEMS * len(KEYS)
    report(capsys, "postgres restart", slow_sim)


def test_a_killed_aggregator_pool_and_a_resume_fire_each_layer_once(
    services, workers, engine, start, slow_sim
):
    job_id = start("agg")
    midway(engine, job_id)  # items finish in the aggregator pool: it is busy now

    assert workers.kill("aggregators") >= 1  # SIGKILL: advance tasks die mid-call
    workers.start("aggregators")
    workers.wait_ready()
    # The killed pool's messages stay unacknowledged in Valkey for the visibility timeout
    # (an hour): the operator resumes the job; finished calls are reused, not re-sent.
    assert resume(engine, job_id) > 0

    job = wait_for(
        lambda: (j := job_row(engine, job_id)).status in ("completed", "cancelled") and j,
        120, "the job to finish",
    )  # fmt: skip
    calls = assert_answered_once(engine, job, "agg")
    assert len(calls) == ITEMS * len(KEYS)
    # Each layer was closed once: the proposers were asked exactly once per proposer call,
    # and an aggregation was sent again only when the crash cut it off in flight.
    assert sim_count(slow_sim, "sim-proposer") == ITEMS * 6
    assert ITEMS <= sim_count(slow_sim, "sim-aggregator") <= ITEMS + AGGREGATOR_THREADS


def test_two_tenants_submitting_the_same_custom_ids_at_once_never_mix_results(
    engine, config, workers, wait_job
):
    from db import repo
    from workers.tasks import dispatch

    tenants = ("acme", "globex")
    job_ids: dict[str, int] = {}
    ready = threading.Barrier(len(tenants))
    errors: list[BaseException] = []

    def submit(tenant: str) -> None:
        lines = [json.dumps({"custom_id": f"id-{i}", "prompt": f"{tenant} asks question {i}"})
                 for i in range(10)]  # fmt: skip
        try:
            ready.wait(timeout=10)
            with Session(engine) as session:
                job = create_job(session, config, "lite", lines, JobOptions(tenant=tenant)).job
                session.commit()
                job_ids[tenant] = job.id
            dispatch.delay(job_ids[tenant])
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(t,)) for t in tenants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(job_ids) == 2

    for tenant, other in (tenants, tenants[::-1]):
        job = wait_job(job_ids[tenant])
        assert (job.status, job.completed, job.tenant) == ("completed", 10, tenant)
        with Session(engine) as session:
            assert repo.tenant_job(session, other, job.id) is None
            results = list(repo.iter_results(session, job.id))
            for item in results:
                question = f"{tenant} asks question {item.custom_id.removeprefix('id-')}"
                assert item.messages[-1]["content"] == question
                assert item.output and item.output.endswith(final_answer(question))
                for call in repo.item_calls(session, item.id):
                    assert call.output and f"{tenant} asks" in call.output
                    assert f"{other} asks" not in call.output
        assert [r.custom_id for r in results] == [f"id-{i}" for i in range(10)]
