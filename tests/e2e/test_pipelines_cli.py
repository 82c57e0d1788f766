"""`moa pipelines` as a user drives it, and a run's jobs seen through `moa jobs` and the API."""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from db.models import PipelineRun
from moa import pipelines
from pipeline.specs import load_config
from tests.conftest import wait_for
from tests.e2e.test_cli import moa

CONFIG = """
[providers.sim]
base_url = "SIM_URL"
[models.reader]
provider = "sim"
model = "sim-reader"
input_per_1m = "1.00"
output_per_1m = "2.00"
[presets.quick]
aggregator = "reader"
[[presets.quick.layers]]
agents = ["reader", "reader"]

[pipelines.tickets]
source = "tickets"
glob = "*.txt"
instruction = "Say what the customer wants"
preset = "quick"
output = "out"
schedule = "0 2 * * *"
"""


def test_list_run_force_and_history(services, workers, sim, tmp_path, api_server, engine):
    (tmp_path / "tickets").mkdir()
    for n in range(2):
        (tmp_path / "tickets" / f"t{n}.txt").write_text(f"Ticket {n}: refund please", "utf-8")
    (tmp_path / "tickets" / "skip.md").write_text("not matched by the glob", "utf-8")
    config = tmp_path / "moa.toml"
    config.write_text(CONFIG.replace("SIM_URL", sim.base_url), encoding="utf-8")
    env = services.env()

    first = moa("pipelines", "run", "tickets", "--config", str(config), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 processed, 0 skipped, 0 failed" in first.stdout
    assert (tmp_path / "out" / "t1.txt.md").read_text().startswith("# t1\n")
    assert (
        "| `t0.txt` | processed | [t0](<t0.txt.md>) |"
        in (tmp_path / "out" / "index.md").read_text()
    )
    job_id = int(re.search(r"run \d+, job (\d+)", first.stdout).group(1))  # type: ignore[union-attr]

    again = moa("pipelines", "run", "tickets", "--config", str(config), env=env)
    assert "0 processed, 2 skipped, 0 failed" in again.stdout, again.stdout
    forced = moa("pipelines", "run", "tickets", "--force", "--config", str(config), env=env)
    assert "2 processed, 0 skipped, 0 failed" in forced.stdout, forced.stdout

    listed = moa("pipelines", "list", "--config", str(config), env=env)
    assert listed.returncode == 0, listed.stderr
    assert "tickets" in listed.stdout and "0 2 * * * (UTC)" in listed.stdout
    history = moa("pipelines", "history", "tickets", env=env)
    assert history.returncode == 0, history.stderr
    assert "manual --force" in history.stdout and history.stdout.count("completed") == 3

    jobs = moa("jobs", "list", env=env)
    assert re.search(rf"│ {job_id}\s+│ completed", jobs.stdout), jobs.stdout
    from db.keys import create_key

    with Session(engine) as session:
        key = create_key(session, "default")
        session.commit()
    with api_server.client(key) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["request_counts"]["completed"] == 2
    assert job["metadata"]["pipeline"] == "tickets" and job["metadata"]["phase"] == "map"


def test_unknown_pipeline_and_missing_folder_are_clear_errors(services, tmp_path, sim):
    config = tmp_path / "moa.toml"
    config.write_text(CONFIG.replace("SIM_URL", sim.base_url), encoding="utf-8")
    unknown = moa("pipelines", "run", "nope", "--config", str(config), env=services.env())
    assert unknown.returncode == 2 and "unknown pipeline 'nope' (known: tickets)" in unknown.stdout
    missing = moa("pipelines", "run", "tickets", "--config", str(config), env=services.env())
    assert missing.returncode == 2 and "source folder" in missing.stdout
    assert "does not exist" in missing.stdout


STALLED = """
[pipelines.stalled]
source = "stalled"
instruction = "Say what the customer wants"
preset = "quick"
output = "stalled-out"
"""


def test_run_nudges_an_active_run_whose_message_was_lost(services, workers, sim, tmp_path, engine):
    (tmp_path / "stalled").mkdir()
    config = tmp_path / "moa.toml"
    config.write_text(CONFIG.replace("SIM_URL", sim.base_url) + STALLED, encoding="utf-8")
    env = services.env()
    loaded = load_config(config)
    with Session(engine) as session:  # a run with nothing to do waits for one advance ...
        started = pipelines.start_run(session, loaded, loaded.pipeline("stalled"))
        session.commit()
    run_id = started.run_id  # ... whose message is lost: no schedule, no tick to resend it
    assert run_id is not None and not started.has_items

    refused = moa("pipelines", "run", "stalled", "--config", str(config), env=env)

    assert refused.returncode == 2
    assert f"run {run_id} of pipeline 'stalled' is still in progress" in refused.stdout
    assert "nudged" in refused.stdout

    def finished() -> bool:
        with Session(engine) as session:
            run = session.get(PipelineRun, run_id)
            return run is not None and run.finished_at is not None

    wait_for(finished, 30, f"the nudged run {run_id} to finish")
    again = moa("pipelines", "run", "stalled", "--config", str(config), env=env)
    assert again.returncode == 0 and "0 processed, 0 skipped, 0 failed" in again.stdout
