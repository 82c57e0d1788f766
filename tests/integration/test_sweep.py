"""Beat's sweeper: items in progress whose messages were lost are restarted where they stand,
items something is still moving are left alone, lost job endings are settled; and a cancel
that settled a waiting call leaves it to be tried again on resume."""

from __future__ import annotations

import json
from collections import Counter

from sqlalchemy import case, func, select, text, update
from sqlalchemy.orm import Session

from db import repo
from db.models import Call, Item, Job
from moa.jobs import JobOptions, create_job
from tests.conftest import job_calls, start_job, wait_for


def test_items_whose_messages_were_lost_are_restarted_once_and_answered(
    engine, config, workers, wait_job
):
    from workers.tasks import sweep

    lines = [
        json.dumps({"custom_id": f"lost{i}", "prompt": f"lost question {i}"}) for i in range(6)
    ]
    with Session(engine) as session:
        job_id = create_job(session, config, "lite", lines, JobOptions()).job.id
        # What dispatch does, without sending the chords: as if the broker lost every message.
        repo.mark_job_started(session, job_id)
        assert len(repo.claim_queued_items(session, job_id, 6, 1)) == 6
        session.commit()
    with Session(engine) as session:
        mine = [row for row in repo.stalled_items(session, 0, 10_000) if row.job_id == job_id]
        assert [(row.layer) for row in mine] == [1] * 6
        # Started a moment ago: not yet quiet for an hour, so not stalled.
        late = repo.stalled_items(session, 3600, 10_000)
        assert not [row for row in late if row.job_id == job_id]

    sweep.delay(0.0)

    job = wait_job(job_id)
    assert (job.status, job.completed) == ("completed", 6)
    with Session(engine) as session:
        calls = job_calls(session, job_id)
        assert not [r for r in repo.stalled_items(session, 0, 10_000) if r.job_id == job_id]
    keys = Counter((c.item_id, c.layer, c.slot) for c in calls)
    assert len(keys) == 6 * 7 and set(keys.values()) == {1}


def _age(engine, job_id: int, hours: float) -> None:
    """Move a job's clock back, as if it had been quiet this long (the sweeper's measure)."""
    with Session(engine) as session:
        past = text(f"now() - interval '{hours} hours'")
        session.execute(
            update(Job).where(Job.id == job_id).values(created_at=past, started_at=past)
        )
        session.execute(update(Item).where(Item.job_id == job_id)
                        .values(started_at=past, finished_at=case((Item.finished_at.is_(None), None), else_=past)))  # fmt: skip
        session.commit()


def test_a_restarted_item_is_noted_and_left_alone_for_another_quiet_period(engine, config):
    from moa.jobs import cancel

    lines = [json.dumps({"custom_id": "quiet", "prompt": "a quiet question"})]
    with Session(engine) as session:
        job_id = create_job(session, config, "lite", lines, JobOptions()).job.id
        repo.mark_job_started(session, job_id)
        (item_id,) = repo.claim_queued_items(session, job_id, 1, 1)
        session.commit()
    _age(engine, job_id, hours=2)
    try:
        with Session(engine) as session:
            assert item_id in [r.id for r in repo.stalled_items(session, 3600, 10_000)]
            repo.mark_restarted(session, [item_id])
            session.commit()
        with Session(engine) as session:
            assert item_id not in [r.id for r in repo.stalled_items(session, 3600, 10_000)]
            assert "restarted_at" in session.get(Item, item_id).notes  # `moa trace` shows it
    finally:
        with Session(engine) as session:
            cancel(session, job_id)
            session.commit()


def test_a_job_whose_finalize_was_lost_is_settled_by_the_sweeper(engine, config, workers, wait_job):
    from workers.tasks import sweep

    lines = [json.dumps({"custom_id": f"done{i}", "prompt": "answered"}) for i in range(2)]
    with Session(engine) as session:
        job_id = create_job(session, config, "lite", lines, JobOptions()).job.id
        # Every item answered and the job finalizing, but the finalize message never came.
        session.execute(update(Item).where(Item.job_id == job_id)
                        .values(status="completed", output="an answer", finished_at=func.now()))  # fmt: skip
        session.execute(update(Job).where(Job.id == job_id).values(status="finalizing"))
        session.commit()
    with Session(engine) as session:
        assert job_id not in repo.stalled_endings(session, 3600)
    _age(engine, job_id, hours=2)
    with Session(engine) as session:
        assert job_id in repo.stalled_endings(session, 3600)

    sweep.delay(3600.0)

    job = wait_job(job_id)
    assert (job.status, job.completed) == ("completed", 2)


def test_a_call_a_cancel_left_waiting_for_its_retry_is_tried_afresh_on_resume(
    engine, workers, sim, tmp_path, wait_job
):
    from moa.jobs import UNFINISHED, cancel, reopen
    from pipeline.specs import load_config
    from workers.tasks import dispatch, finalize

    path = tmp_path / "moa.toml"
    path.write_text(f"""
[providers.waity]
base_url = "{sim.base_url}"
[models.w]
provider = "waity"
model = "sim-waits"
[presets.one-wait]
aggregator = "w"
""", encoding="utf-8")  # fmt: skip
    sim.script("sim-waits", ["429:30"])
    job_id = start_job(
        engine, load_config(path), "one-wait", [{"custom_id": "w", "prompt": "wait"}]
    )

    def waiting() -> Call | None:
        with Session(engine) as session:
            call = next(iter(job_calls(session, job_id)), None)
            return call if call is not None and call.status == "retrying" else None

    wait_for(waiting, 30, "the call to wait for its retry (Retry-After: 30)")
    with Session(engine) as session:
        cancel(session, job_id)
        session.commit()
    finalize.delay(job_id)
    assert wait_job(job_id).status == "cancelled"
    with Session(engine, expire_on_commit=False) as session:
        (call,) = session.scalars(select(Call).join(Item).where(Item.job_id == job_id))
    assert (call.status, call.error_code) == ("failed", "abandoned")

    with Session(engine) as session:  # `moa jobs resume`
        assert reopen(session, job_id, UNFINISHED, None) == 1
        session.commit()
    dispatch.delay(job_id)

    job = wait_job(job_id)
    assert (job.status, job.completed) == ("completed", 1)
    with Session(engine) as session:
        (call,) = session.scalars(select(Call).join(Item).where(Item.job_id == job_id))
        assert call.status == "succeeded" and call.attempt == 1
        assert [a["outcome"] for a in call.attempts] == ["rate_limited", "ok"]
