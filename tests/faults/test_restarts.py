"""Faults mid-job on real parts: Valkey and PostgreSQL stopped and started again on their
port and data, and two tenants submitting the same custom_ids at once. Whatever breaks,
every item is answered once and no call is recorded twice."""

from __future__ import annotations

import json
import threading
from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Item
from moa.jobs import JobOptions, create_job
from tests.conftest import wait_for, wait_job_end
from tests.faults.common import (
    AGGREGATOR_THREADS,
    ITEMS,
    KEYS,
    PROPOSER_THREADS,
    assert_answered_once,
    client_reconnected,
    final_answer,
    midway,
    pools_answer,
    report,
    resume,
)


def test_a_valkey_restart_mid_job_heals_and_answers_every_item_once(
    services, workers, engine, start, slow_sim, beat, capsys
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
    # Tasks that were running when the broker went away met a closed connection (the gate,
    # the chord counter): their item stays in progress with no message left to move it, and
    # beat's sweeper restarts it once it has been quiet for 10 s. No operator.
    job = wait_job_end(engine, job_id, timeout_s=180)
    with Session(engine) as session:
        errors = Counter(session.scalars(
            select(Item.error_code).where(Item.job_id == job_id, Item.status == "failed")
        ))  # fmt: skip
    with capsys.disabled():
        print(f"\nvalkey restart: {job.completed} completed, {job.failed} failed without an "
              f"operator {dict(errors)}; pools started again: {revived or 'none'}")  # fmt: skip
    # Only a task cut off by the outage may fail its item outright, so at most one item per
    # worker thread, each as an internal error `moa jobs retry --failed` is for.
    assert job.failed <= PROPOSER_THREADS + AGGREGATOR_THREADS
    assert set(errors) <= {"internal_error"}
    if job.failed:
        assert resume(engine, job_id) > 0
        job = wait_job_end(engine, job_id, timeout_s=120)

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
    job = wait_job_end(engine, job_id, timeout_s=120)
    calls = assert_answered_once(engine, job, "pg")
    assert len(calls) == ITEMS * len(KEYS)
    report(capsys, "postgres restart", slow_sim)


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
