"""Document pipelines: a folder in, a report per document and an index out, paying only for
what changed.

A run is ordinary jobs. :func:`start_run` takes the pipeline's lock (one unfinished run
per pipeline), reads the folder, skips documents whose content and settings are
unchanged, cuts long ones into parts and creates the *map* job: one item per part.
When a job of the run finishes, the finalize task asks :func:`advance_run` to move
on: documents in several parts get a *reduce* job (MoA over the parts' results);
then the reports and the index are written and the run ends. Every step is
compare-and-set on the locked run row, so a repeated message changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import pipelines as runs
from db import repo
from db.models import Job, PipelineRun
from moa.jobs import JobOptions, Limits, create_job
from pipeline.chunking import (
    call_room,
    map_messages,
    part_room,
    reduce_fits,
    reduce_messages,
    split_text,
)
from pipeline.documents import DocumentError, parse_document
from pipeline.errors import MoaError
from pipeline.pipelines import PipelineSpec, spec_from_record
from pipeline.reports import EXTENSIONS, Index, IndexEntry, Report, render_index, render_report
from pipeline.specs import Config, config_from_snapshot
from pipeline.tokens import count_tokens

MIN_PART_TOKENS = 64  # a preset that leaves less room than this for text cannot run a pipeline

log = logging.getLogger(__name__)


class PipelineError(MoaError):
    """A pipeline cannot run as declared (its folder is missing, its preset too small)."""


@dataclass(frozen=True)
class Started:
    run_id: int | None  # None: another run of the pipeline is still active
    active_run_id: int | None = None
    job_id: int | None = None
    has_items: bool = False  # the job needs dispatching; else the run can end at once


@dataclass(frozen=True)
class Step:
    """What the caller does after committing: dispatch a job, or nothing (the run is over
    or waits for its job)."""

    dispatch_job_id: int | None = None
    finished: bool = False


# --- starting a run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    room: int  # tokens for the query in the tightest call of the preset
    model: str  # whose tokenizer counts
    answer_tokens: int  # the longest a part's result can be (the final aggregator's max)


def sizing(config: Config, spec: PipelineSpec) -> Sizing:
    preset = config.preset(spec.preset)
    room, model = call_room(config, preset)
    return Sizing(room, model, preset.aggregator.max_tokens)


def start_run(
    session: Session, config: Config, spec: PipelineSpec, *, force: bool = False,
    trigger: str = "manual",
) -> Started:  # fmt: skip
    """Claim the pipeline and create the run's map job, in the caller's transaction."""
    if not spec.source.is_dir():
        raise PipelineError(f"pipeline {spec.name!r}: source folder {spec.source} does not exist")
    size = sizing(config, spec)
    if part_room(size.room, spec.instruction, "x" * 40, size.model) < MIN_PART_TOKENS:
        raise PipelineError(
            f"pipeline {spec.name!r}: preset {spec.preset!r} leaves no room for document text "
            f"(about {size.room} tokens per call)"
        )
    run_id = runs.claim_run(session, spec.name, spec.record(), force=force, trigger=trigger)
    if run_id is None:
        active = runs.active_run(session, spec.name)
        return Started(None, active_run_id=active.id if active else None)
    documents = scan(session, spec, size, force)
    rows = list(_map_rows(spec, documents))
    meta = {"pipeline": spec.name, "pipeline_run": run_id, "phase": "map"}
    job = _job(session, config, spec.preset, rows, meta)
    run = runs.get_run(session, run_id)
    assert run is not None
    run.documents = [d.record for d in documents]
    run.map_job_id = job.id
    return Started(run_id, job_id=job.id, has_items=bool(rows))


def _job(
    session: Session, config: Config, preset: str, rows: list[dict[str, Any]], meta: dict[str, Any]
) -> Job:
    """An ordinary job; one with nothing to do is created already completed."""
    if not rows:
        job = repo.create_job(session, preset=preset, config=config.snapshot(preset), metadata=meta)
        repo.queue_job(session, job.id, 0)
        repo.begin_finalizing(session, job.id)
        repo.finalize_job(session, job.id)
        return job
    options = JobOptions(metadata=meta, limits=Limits(max_prompt_chars=sys.maxsize))
    lines = [json.dumps(row) for row in rows]
    return create_job(session, config, preset, lines, options).job


@dataclass
class Planned:
    """One document of a run and what happens to it."""

    record: dict[str, Any]
    parts: list[str]

    @property
    def index(self) -> int:
        return int(self.record["index"])


def scan(session: Session, spec: PipelineSpec, size: Sizing, force: bool) -> list[Planned]:
    """Every matching file: skipped (unchanged), failed (unreadable) or cut into parts."""
    known = runs.known_documents(session, spec.name)
    fingerprint = spec.fingerprint()
    planned: list[Planned] = []
    for index, path in enumerate(matching_files(spec)):
        rel = path.relative_to(spec.source).as_posix()
        record: dict[str, Any] = {"index": index, "path": rel}
        data = _read(path, record)
        if data is None:
            planned.append(Planned(record, []))
            continue
        record["sha256"] = hashlib.sha256(data).hexdigest()
        previous = known.get(rel)
        if not force and _unchanged(spec, previous, record["sha256"], fingerprint):
            assert previous is not None
            record.update(status="skipped", title=previous.title, report=previous.report_path)
            planned.append(Planned(record, []))
            continue
        planned.append(_plan_document(spec, size, path, data, record))
    return planned


def _read(path: Path, record: dict[str, Any]) -> bytes | None:
    """The file's bytes, read once (hashed and parsed alike); None, with the document
    failed, when the OS refuses them: no permission, deleted since the glob, a dead link."""
    try:
        return path.read_bytes()
    except OSError as exc:
        error = f"cannot read the file: {exc.strerror or exc}"
        record.update(status="failed", error=error, title=path.stem)
        return None


def matching_files(spec: PipelineSpec) -> list[Path]:
    """Files the glob picks, in path order; hidden ones and the output folder left out."""
    output = spec.output.resolve()
    found = []
    for path in spec.source.glob(spec.glob):
        rel = path.relative_to(spec.source)
        if not _is_document(path) or any(p.startswith(".") for p in rel.parts):
            continue
        if path.resolve().is_relative_to(output):
            continue
        found.append(path)
    return sorted(found)


def _is_document(path: Path) -> bool:
    """A file, or a link the glob picked whose file is gone: reading it fails, so the run
    reports it rather than leaving it out unsaid. Folders and the like are not documents."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _unchanged(spec: PipelineSpec, previous: Any, sha256: str, fingerprint: str) -> bool:
    return (
        previous is not None
        and previous.sha256 == sha256
        and previous.fingerprint == fingerprint
        and previous.report_path is not None
        and (spec.output / previous.report_path).is_file()
    )


def _plan_document(
    spec: PipelineSpec, size: Sizing, path: Path, data: bytes, record: dict[str, Any]
) -> Planned:
    try:
        document = parse_document(path.name, data)
    except DocumentError as exc:
        record.update(status="failed", error=str(exc), title=path.stem)
        return Planned(record, [])
    record["title"] = document.title
    name = record["path"]
    whole = part_room(size.room, spec.instruction, name, size.model, parts=1)
    if count_tokens(document.text, size.model) <= whole:
        parts = [document.text]
    else:
        limit = part_room(size.room, spec.instruction, name, size.model)
        parts = split_text(document.text, limit, size.model)
        reducible = reduce_fits(
            size.room, spec.instruction, name, size.model, size.answer_tokens, len(parts)
        )
        if not reducible:
            error = f"too long: {len(parts)} parts, whose results do not fit one reduce call"
            record.update(status="failed", error=error, parts=len(parts))
            return Planned(record, [])
    record.update(status="mapping", parts=len(parts))
    return Planned(record, parts)


def _map_rows(spec: PipelineSpec, documents: list[Planned]) -> Iterator[dict[str, Any]]:
    for doc in documents:
        count = len(doc.parts)
        for number, text in enumerate(doc.parts, start=1):
            messages = map_messages(spec.instruction, doc.record["path"], text, number, count)
            yield {"custom_id": f"{doc.index}.{number}", "messages": messages}


# --- moving a run on ------------------------------------------------------------------------


def advance_run(session: Session, run_id: int) -> Step:
    """Move a run on after one of its jobs ended; safe to call any number of times."""
    run = runs.lock_run(session, run_id)
    if run is None or run.finished_at is not None:
        return Step(finished=run is not None)
    job_id = run.reduce_job_id if run.status == "reducing" else run.map_job_id
    job = repo.get_job(session, job_id) if job_id is not None else None
    if job is None:
        _end(run, "failed", "the run's job is gone")
        return Step(finished=True)
    if job.status not in repo.JOB_ENDED:
        return Step(dispatch_job_id=job.id)  # waiting; dispatching again is harmless
    if run.status == "mapping":
        reduce_job = _after_map(session, run, job)
        if reduce_job is not None:
            return Step(dispatch_job_id=reduce_job)
    else:
        _after_reduce(session, run, job)
    _finish(session, run)
    return Step(finished=True)


def _finish(session: Session, run: PipelineRun) -> None:
    """Write the outputs and end the run. Whatever stops that (the output folder or the
    index cannot be written, a fault in rendering) ends the run failed with the reason: an
    unfinished run would hold the pipeline's lock for good. Database errors are left to
    the task's retries, as the transaction cannot record anything after them."""
    try:
        write_outputs(session, run)
    except SQLAlchemyError:
        raise
    except Exception as exc:
        log.exception("pipeline %s: run %s could not write its outputs", run.pipeline, run.id)
        _end(run, "failed", _describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot write {exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _after_map(session: Session, run: PipelineRun, job: Job) -> int | None:
    """Settle single-part documents; create the reduce job for the others, if any."""
    results = runs.item_results(session, job.id)
    documents = [dict(d) for d in run.documents]
    to_reduce = []
    for doc in documents:
        if doc["status"] != "mapping":
            continue
        parts = [results.get(f"{doc['index']}.{n}") for n in range(1, doc["parts"] + 1)]
        done = [p for p in parts if p is not None and p.status == "completed"]
        if len(done) < len(parts):
            bad = next((p for p in parts if p is None or p.status != "completed"), None)
            doc.update(status="failed", error=_item_error(bad))
        elif doc["parts"] == 1:
            doc["status"] = "answered"
        else:
            doc["status"] = "reducing"
            to_reduce.append((doc, [p.output or "" for p in done]))
    run.documents = documents
    if not to_reduce:
        return None
    spec = spec_from_record(run.spec)
    rows = [
        {"custom_id": str(doc["index"]),
         "messages": reduce_messages(spec.instruction, doc["path"], outputs)}
        for doc, outputs in to_reduce
    ]  # fmt: skip
    config, _ = config_from_snapshot(job.config)
    meta = {"pipeline": spec.name, "pipeline_run": run.id, "phase": "reduce"}
    reduce_job = _job(session, config, spec.preset, rows, meta)
    run.reduce_job_id = reduce_job.id
    run.status = "reducing"
    return reduce_job.id


def _item_error(result: runs.ItemResult | None) -> str:
    if result is None:
        return "a part of the document was never processed"
    return f"{result.status}: {result.error or 'no answer'}"


def _after_reduce(session: Session, run: PipelineRun, job: Job) -> None:
    results = runs.item_results(session, job.id)
    documents = [dict(d) for d in run.documents]
    for doc in documents:
        if doc["status"] != "reducing":
            continue
        result = results.get(str(doc["index"]))
        if result is None or result.status != "completed":
            doc.update(status="failed", error="reduce " + _item_error(result))
        else:
            doc["status"] = "answered"
    run.documents = documents


def _end(run: PipelineRun, status: str, error: str | None = None) -> None:
    run.status = status
    run.error = error
    run.finished_at = datetime.now(UTC)


# --- reports --------------------------------------------------------------------------------


def write_outputs(session: Session, run: PipelineRun) -> None:
    """Write the answered documents' reports and the index, record them, end the run.
    Files are overwritten whole, so a repeated attempt writes the same reports. A report
    that cannot be written fails its document; an index that cannot be written raises."""
    spec = spec_from_record(run.spec)
    ext = EXTENSIONS[spec.format]
    spec.output.mkdir(parents=True, exist_ok=True)
    usage = _usage(session, run)
    documents = [dict(d) for d in run.documents]
    entries = []
    for doc in documents:
        if doc["status"] == "answered":
            _write_report(session, run, spec, doc, usage)
        cost = usage.cost(doc) if doc["status"] == "processed" else Decimal(0)
        entries.append(_entry(doc, cost))
    run.documents = documents
    run.processed, run.skipped, run.failed = (
        sum(1 for d in documents if d["status"] == s) for s in ("processed", "skipped", "failed")
    )
    run.cost = usage.total
    now = _now()
    index = Index(
        pipeline=spec.name, run_id=run.id, instruction=spec.instruction, preset=spec.preset,
        started_at=run.created_at.isoformat(timespec="seconds"), finished_at=now,
        entries=entries, cost=usage.total, job_ids=usage.job_ids,
    )  # fmt: skip
    index_path = spec.output / f"index.{ext}"
    index_path.write_text(render_index(index, spec.format), encoding="utf-8")
    run.index_path = str(index_path)
    _end(run, "completed")


def _entry(doc: dict[str, Any], cost: Decimal) -> IndexEntry:
    return IndexEntry(
        source=doc["path"], status=doc["status"], title=doc.get("title") or "",
        report=doc.get("report"), error=doc.get("error"), cost=cost,
    )  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class _Usage:
    """The run's jobs' items by job phase, to total each document's calls and cost."""

    mapped: dict[str, runs.ItemResult]
    reduced: dict[str, runs.ItemResult]
    total: Decimal
    job_ids: tuple[int, ...]

    def items(self, doc: dict[str, Any]) -> list[runs.ItemResult]:
        found = [self.mapped.get(f"{doc['index']}.{n}") for n in range(1, doc["parts"] + 1)]
        if doc["parts"] > 1:
            found.append(self.reduced.get(str(doc["index"])))
        return [r for r in found if r is not None]

    def cost(self, doc: dict[str, Any]) -> Decimal:
        return sum((r.cost for r in self.items(doc)), Decimal(0))


def _usage(session: Session, run: PipelineRun) -> _Usage:
    job_ids = tuple(j for j in (run.map_job_id, run.reduce_job_id) if j is not None)
    jobs = [repo.get_job(session, j) for j in job_ids]
    total = sum((j.cost for j in jobs if j is not None), Decimal(0))
    mapped = runs.item_results(session, run.map_job_id) if run.map_job_id else {}
    reduced = runs.item_results(session, run.reduce_job_id) if run.reduce_job_id else {}
    return _Usage(mapped, reduced, total, job_ids)


def _write_report(
    session: Session, run: PipelineRun, spec: PipelineSpec, doc: dict[str, Any], usage: _Usage
) -> None:
    """Write an answered document's report: it is processed, or failed with the reason."""
    items = usage.items(doc)
    final = usage.reduced.get(str(doc["index"])) if doc["parts"] > 1 else items[0]
    assert final is not None
    report = Report(
        title=doc.get("title") or doc["path"], source=doc["path"], pipeline=spec.name,
        instruction=spec.instruction, answer=final.output or "",
        models=tuple(sorted({m for r in items for m in r.models})),
        prompt_tokens=sum(r.prompt_tokens for r in items),
        completion_tokens=sum(r.completion_tokens for r in items),
        cost=usage.cost(doc), calls=sum(r.calls for r in items), parts=doc["parts"],
        run_id=run.id, generated_at=_now(),
    )  # fmt: skip
    relative = f"{doc['path']}.{EXTENSIONS[spec.format]}"
    target = spec.output / relative
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_report(report, spec.format), encoding="utf-8")
    except OSError as exc:  # e.g. a name too long once the extension is added
        error = f"cannot write the report {target}: {exc.strerror or exc}"
        doc.update(status="failed", error=error)
        return
    doc.update(status="processed", report=relative)
    runs.save_document(
        session, spec.name, doc["path"],
        {"sha256": doc["sha256"], "fingerprint": spec.fingerprint(), "title": report.title,
         "report_path": relative, "last_run_id": run.id, "error": None,
         "cost": report.cost},
    )  # fmt: skip


def run_record(run: PipelineRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "pipeline": run.pipeline,
        "status": run.status,
        "trigger": run.trigger,
        "force": run.force,
        "processed": run.processed,
        "skipped": run.skipped,
        "failed": run.failed,
        "cost": f"{run.cost:f}",
        "map_job_id": run.map_job_id,
        "reduce_job_id": run.reduce_job_id,
        "index": run.index_path,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "errors": {d["path"]: d["error"] for d in run.documents if d.get("error")},
    }
