"""Document pipelines on the real stack: a folder of mixed documents through map and reduce
jobs on real workers, incremental runs, the lock against overlapping runs, and beat."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Call, Item, Job, PipelineRun
from moa import pipelines
from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import ROOT, wait_for
from tests.documents import write_corrupt_pdf, write_docx, write_html, write_pdf
from workers.pipelines import after_start

# A small context window, so that one document of about 3000 tokens needs parts.
CONFIG = """
[providers.sim]
base_url = "SIM_URL"
timeout_s = 10
[providers.slow]
base_url = "SLOW_URL"
timeout_s = 10
[models.reader]
provider = "sim"
model = "sim-reader"
context_window = 1500
input_per_1m = "1.00"
output_per_1m = "2.00"
[models.slow]
provider = "slow"
model = "slow-reader"
[presets.docs]
aggregator = { model = "reader", max_tokens = 120 }
[[presets.docs.layers]]
agents = [{ model = "reader", max_tokens = 120, samples = 2 }]
[presets.slow]
aggregator = { model = "slow", max_tokens = 50 }
[[presets.slow.layers]]
agents = [{ model = "slow", max_tokens = 50, samples = 2 }]

[pipelines.nightly]
source = "docs"
instruction = "Summarize for an executive"
preset = "docs"
output = "reports"
format = "html"

[pipelines.race]
source = "race-docs"
glob = "*.txt"
instruction = "List the risks"
preset = "docs"
output = "race-reports"

[pipelines.rough]
source = "rough-docs"
glob = "*.txt"
instruction = "Summarize"
preset = "docs"
output = "rough-reports"

[pipelines.longnames]
source = "long-names"
instruction = "Summarize"
preset = "docs"
output = "long-name-reports"
format = "html"

[pipelines.blocked]
source = "blocked-docs"
instruction = "Summarize"
preset = "docs"
output = "blocked-reports"

[pipelines.beaty]
source = "beat-docs"
instruction = "List the risks"
preset = "slow"
output = "beat-reports"
format = "json"
schedule = "every 1s"
"""

KINDS = ("txt", "md", "html", "pdf", "docx")


def _paragraph(topic: str, n: int) -> str:
    return f"{topic} note {n}: the supplier delivers on time; penalties apply after day {n}."


def _write_folder(folder: Path) -> None:
    """20 documents: 3 txt, 4 md, 4 html, 3 pdf, 4 docx, one corrupt PDF and one long text."""
    folder.mkdir()
    for kind in KINDS:
        for n in range(3 if kind in ("txt", "pdf") else 4):
            stem, text = f"{kind}-{n}", "\n\n".join(_paragraph(f"{kind}{n}", i) for i in range(3))
            path = folder / f"{stem}.{kind}"
            if kind == "pdf":
                write_pdf(path, text, title=f"PDF {n}")
            elif kind == "docx":
                write_docx(path, text, heading=f"Word {n}")
            elif kind == "html":
                write_html(path, text, title=f"Page {n}")
            else:
                path.write_text(f"# {stem}\n\n{text}" if kind == "md" else text, encoding="utf-8")
    write_corrupt_pdf(folder / "broken.pdf")
    sub = folder / "long"
    sub.mkdir()
    (sub / "contract.txt").write_text(
        "\n\n".join(_paragraph("Long", i) for i in range(220)), encoding="utf-8"
    )


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(latency_ms=800)) as server:
        yield server


@pytest.fixture(scope="module")
def setup(sim: SimServer, slow_sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    _write_folder(root / "docs")
    (root / "race-docs").mkdir()
    (root / "race-docs" / "one.txt").write_text("A single short ticket.", encoding="utf-8")
    (root / "beat-docs").mkdir()
    (root / "beat-docs" / "ticket.md").write_text("# Ticket\n\nPrinter on fire.", encoding="utf-8")
    path = root / "moa.toml"
    text = CONFIG.replace("SIM_URL", sim.base_url).replace("SLOW_URL", slow_sim.base_url)
    path.write_text(text, encoding="utf-8")
    return path


def _start(engine: Any, config_path: Path, name: str, force: bool = False) -> int:
    config = load_config(config_path)
    with Session(engine) as session:
        started = pipelines.start_run(session, config, config.pipeline(name), force=force)
        session.commit()
    after_start(started)
    assert started.run_id is not None
    return started.run_id


def _finished(engine: Any, run_id: int, timeout_s: float = 90) -> PipelineRun:
    def done() -> PipelineRun | None:
        with Session(engine, expire_on_commit=False) as session:
            run = session.get(PipelineRun, run_id)
            return run if run is not None and run.finished_at is not None else None

    return wait_for(done, timeout_s, f"pipeline run {run_id} to finish")  # type: ignore[no-any-return]


def _by_path(run: PipelineRun) -> dict[str, dict[str, Any]]:
    return {d["path"]: d for d in run.documents}


def test_folder_to_reports_then_incremental_runs(engine, workers, setup, sim):
    reports = setup.parent / "reports"
    first = _finished(engine, _start(engine, setup, "nightly"))

    assert (first.status, first.processed, first.skipped, first.failed) == ("completed", 19, 0, 1)
    docs = _by_path(first)
    assert len(docs) == 20
    assert docs["broken.pdf"]["status"] == "failed"
    assert docs["broken.pdf"]["error"].startswith("not a readable PDF file")
    long_doc = docs["long/contract.txt"]
    assert long_doc["parts"] > 1 and long_doc["status"] == "processed"
    written = sorted(p.relative_to(reports).as_posix() for p in reports.rglob("*.html"))
    assert len(written) == 20 and "index.html" in written  # 19 reports and the index
    assert "broken.pdf.html" not in written
    index = (reports / "index.html").read_text()
    assert index.count('class="processed"') == 19 and "not a readable PDF file" in index
    report = (reports / "long" / "contract.txt.html").read_text()
    # The simulator echoes what it was sent: the answer is the reduce step over the parts.
    assert f"results of its {long_doc['parts']} parts" in report
    assert "sim-reader" in report and first.cost > 0

    with Session(engine) as session:
        map_job, reduce_job = (
            session.get(Job, first.map_job_id),
            session.get(Job, first.reduce_job_id),
        )
        assert map_job is not None and reduce_job is not None
        assert map_job.metadata_ == {
            "pipeline": "nightly",
            "pipeline_run": first.id,
            "phase": "map",
        }
        assert map_job.total == 18 + long_doc["parts"] and reduce_job.total == 1
        assert (map_job.status, reduce_job.status) == ("completed", "completed")
        reduce_calls = session.scalar(
            select(func.count()).select_from(Call).join(Item).where(Item.job_id == reduce_job.id)
        )
        assert reduce_calls == 3  # the reduce step is MoA: two proposals, then the aggregator
        assert first.cost == map_job.cost + reduce_job.cost

    before = sim.stats()["requests"]
    second = _finished(engine, _start(engine, setup, "nightly"))
    assert (second.processed, second.skipped, second.failed) == (0, 19, 1)
    assert sim.stats()["requests"] == before  # nothing was sent
    with Session(engine) as session:
        empty = session.get(Job, second.map_job_id)
        assert empty is not None and (empty.status, empty.total) == ("completed", 0)
    assert (reports / "index.html").read_text().count('class="skipped"') == 19

    edited = setup.parent / "docs" / "md-2.md"
    edited.write_text(edited.read_text() + "\n\nAddendum: the penalty doubles.", encoding="utf-8")
    third = _finished(engine, _start(engine, setup, "nightly"))
    assert (third.processed, third.skipped, third.failed) == (1, 18, 1)
    assert [p for p, d in _by_path(third).items() if d["status"] == "processed"] == ["md-2.md"]
    assert sim.stats()["requests"] == before + 3  # one document, one part, three calls


def test_two_racing_starts_give_one_run(engine, workers, setup):
    config = load_config(setup)
    spec = config.pipeline("race")
    barrier = threading.Barrier(2)
    results: list[pipelines.Started] = []

    def start() -> None:
        with Session(engine) as session:
            barrier.wait()
            started = pipelines.start_run(session, config, spec, trigger="beat")
            session.commit()
        results.append(started)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [r for r in results if r.run_id is not None]
    losers = [r for r in results if r.run_id is None]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].active_run_id == winners[0].run_id
    after_start(winners[0])
    run = _finished(engine, winners[0].run_id)  # type: ignore[arg-type]
    assert (run.processed, run.failed) == (1, 0)
    with Session(engine) as session:
        runs = session.scalar(select(func.count()).where(PipelineRun.pipeline == "race"))
    assert runs == 1


def test_beat_triggers_runs_and_ticks_meet_the_lock(engine, workers, services, setup):
    log_path = services.home / "beat-test.log"
    with log_path.open("ab") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "moa.cli", "beat", "--config", str(setup)],
            stdout=log, stderr=subprocess.STDOUT, env=services.env(), cwd=ROOT,
        )  # fmt: skip
    try:
        runs = wait_for(lambda: _beat_runs(engine, finished=2), 60, "two finished beat runs")
    finally:
        beat.terminate()
        beat.wait(timeout=20)
    first = runs[0]
    assert first.trigger == "beat" and first.processed == 1
    # The first run makes two slow layers of calls (0.8 s each); ticks come every second.
    took = (first.finished_at - first.created_at).total_seconds()
    assert took >= 1.5
    assert "Sending due task pipeline:beaty" in log_path.read_text()
    control_log = services.home / "worker-control.log"
    refused = f"pipeline beaty: run {first.id} still active"
    wait_for(lambda: refused in control_log.read_text(), 10, "a tick to meet the active run")
    for earlier, later in pairwise(runs):  # never two at once
        assert later.created_at >= earlier.finished_at
    report = json.loads((setup.parent / "beat-reports" / "ticket.md.json").read_text())
    assert report["title"] == "Ticket" and report["calls"] == 3


def _beat_runs(engine: Any, finished: int) -> list[PipelineRun] | None:
    with Session(engine, expire_on_commit=False) as session:
        query = select(PipelineRun).where(PipelineRun.pipeline == "beaty").order_by(PipelineRun.id)
        runs = list(session.scalars(query))
    done = [r for r in runs if r.finished_at is not None]
    return runs if len(done) >= finished else None


def test_files_the_os_will_not_read_fail_alone(engine, workers, setup):
    folder = setup.parent / "rough-docs"
    folder.mkdir()
    (folder / "fine.txt").write_text("A readable ticket.", encoding="utf-8")
    # Tests may run as root, whom chmod 000 does not stop: a file that reads with EIO for
    # anyone, and a link whose file was deleted after it was made.
    (folder / "eio.txt").symlink_to("/proc/self/mem")
    (folder / "gone.txt").symlink_to(folder / "deleted.txt")
    (folder / "trap.txt").mkdir()  # a folder named like a document is not one

    run = _finished(engine, _start(engine, setup, "rough"))

    docs = _by_path(run)
    assert sorted(docs) == ["eio.txt", "fine.txt", "gone.txt"]
    assert (run.status, run.processed, run.failed) == ("completed", 1, 2)
    assert docs["eio.txt"]["error"] == "cannot read the file: Input/output error"
    assert docs["gone.txt"]["error"] == "cannot read the file: No such file or directory"
    index = (setup.parent / "rough-reports" / "index.md").read_text()
    assert "Input/output error" in index and "No such file or directory" in index


def test_a_report_that_cannot_be_written_fails_its_document_and_the_run_ends(
    engine, workers, setup
):
    folder, reports = setup.parent / "long-names", setup.parent / "long-name-reports"
    folder.mkdir()
    long_name = "n" * 248 + ".txt"  # 252 characters: a file name, but its report's (257) is not
    (folder / long_name).write_text("A ticket with a long name.", encoding="utf-8")
    (folder / "short.txt").write_text("A ticket with a short name.", encoding="utf-8")

    first = _finished(engine, _start(engine, setup, "longnames"), timeout_s=30)

    assert (first.status, first.processed, first.failed) == ("completed", 1, 1)
    error = _by_path(first)[long_name]["error"]
    assert error == f"cannot write the report {reports / long_name}.html: File name too long"
    assert (reports / "short.txt.html").is_file()
    assert "File name too long" in (reports / "index.html").read_text()
    second = _finished(engine, _start(engine, setup, "longnames"), timeout_s=30)  # not locked
    assert (second.status, second.skipped, second.failed) == ("completed", 1, 1)


def test_an_index_that_cannot_be_written_ends_the_run_failed(engine, workers, setup):
    folder, reports = setup.parent / "blocked-docs", setup.parent / "blocked-reports"
    folder.mkdir()
    (folder / "one.txt").write_text("A ticket.", encoding="utf-8")
    (reports / "index.md").mkdir(parents=True)  # where the index goes

    first = _finished(engine, _start(engine, setup, "blocked"), timeout_s=30)

    assert (first.status, first.processed) == ("failed", 1)
    assert first.error == f"cannot write {reports / 'index.md'}: Is a directory"
    assert (reports / "one.txt.md").is_file()
    (reports / "index.md").rmdir()
    second = _finished(engine, _start(engine, setup, "blocked"), timeout_s=30)  # not locked
    assert (second.status, second.skipped) == ("completed", 1)
    assert (reports / "index.md").is_file()
