"""Beat's sweeper: items in progress whose messages were lost are restarted where they stand,
and items something is still moving are left alone."""

from __future__ import annotations

import json
from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import repo
from db.models import Call, Item
from moa.jobs import JobOptions, create_job


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
        query = select(Call).join(Item, Item.id == Call.item_id).where(Item.job_id == job_id)
        calls = list(session.scalars(query))
        assert not [r for r in repo.stalled_items(session, 0, 10_000) if r.job_id == job_id]
    keys = Counter((c.item_id, c.layer, c.slot) for c in calls)
    assert len(keys) == 6 * 7 and set(keys.values()) == {1}
