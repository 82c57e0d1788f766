"""Tasks of document pipelines, thin: a beat tick starts a run, a finished job moves it on.

``moa.pipeline_trigger`` runs on the control pool: it reads moa.toml (the file beat
scheduled from), takes the pipeline's lock and creates the map job. When a run's job
is finalized, ``moa.finalize`` sends ``moa.pipeline_advance``, which creates the reduce
job or writes the reports. Both are idempotent: a redelivered message finds the run
already moved on. A tick that meets an active run nudges that run instead, so a run
whose message was lost in a crash is picked up again by the next tick.
"""

from __future__ import annotations

from pathlib import Path

from celery.utils.log import get_task_logger

from moa import pipelines
from moa.settings import get_settings, load_moa_config
from workers import resources
from workers.app import DB_RETRY, app
from workers.tasks import dispatch

log = get_task_logger(__name__)


@app.task(name="moa.pipeline_trigger", ignore_result=True, **DB_RETRY)
def pipeline_trigger(
    name: str, config_path: str | None = None, force: bool = False, trigger: str = "beat"
) -> int | None:
    """Start a run of pipeline ``name``; returns its id, None if one was already active."""
    config = load_moa_config(get_settings(), Path(config_path) if config_path else None)
    spec = config.pipeline(name)
    with resources.sessions().begin() as session:
        started = pipelines.start_run(session, config, spec, force=force, trigger=trigger)
    after_start(started)
    if started.run_id is None:
        log.info("pipeline %s: run %s still active, no new run", name, started.active_run_id)
    return started.run_id


def after_start(started: pipelines.Started) -> None:
    """After the run's transaction committed: send its first job on its way."""
    if started.run_id is None:
        if started.active_run_id is not None:
            pipeline_advance.delay(started.active_run_id)
    elif started.has_items and started.job_id is not None:
        dispatch.delay(started.job_id)
    else:  # nothing changed: the run can write its index now
        pipeline_advance.delay(started.run_id)


@app.task(name="moa.pipeline_advance", ignore_result=True, **DB_RETRY)
def pipeline_advance(run_id: int) -> None:
    with resources.sessions().begin() as session:
        step = pipelines.advance_run(session, run_id)
    if step.dispatch_job_id is not None:
        dispatch.delay(step.dispatch_job_id)
