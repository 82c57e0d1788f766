"""Reports people read: one per document (title, source, the answer, a footer with models,
tokens and cost) and an index of a run linking every document with its status.

Three formats: Markdown, HTML (a standalone page; every text from a document or a
model is escaped, and the answer's Markdown is rendered with raw HTML disabled)
and JSON.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

EXTENSIONS = {"markdown": "md", "html": "html", "json": "json"}


@dataclass(frozen=True)
class Report:
    title: str
    source: str  # the path of the document, relative to the pipeline's folder
    pipeline: str
    instruction: str
    answer: str
    models: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    calls: int
    parts: int  # 1, or how many chunks were mapped, then reduced
    run_id: int
    generated_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class IndexEntry:
    source: str
    status: str  # processed | skipped | failed
    title: str = ""
    report: str | None = None  # link relative to the index
    error: str | None = None
    cost: Decimal = Decimal(0)


@dataclass(frozen=True)
class Index:
    pipeline: str
    run_id: int
    instruction: str
    preset: str
    started_at: str
    finished_at: str
    entries: Sequence[IndexEntry]
    cost: Decimal
    job_ids: tuple[int, ...]

    def count(self, status: str) -> int:
        return sum(1 for e in self.entries if e.status == status)


def render_report(report: Report, fmt: str) -> str:
    if fmt == "json":
        return _json(report)
    if fmt == "html":
        return _report_html(report)
    return _report_markdown(report)


def render_index(index: Index, fmt: str) -> str:
    if fmt == "json":
        return _json(index)
    if fmt == "html":
        return _index_html(index)
    return _index_markdown(index)


def _json(value: Any) -> str:
    return json.dumps(asdict(value), indent=2, default=str, ensure_ascii=False) + "\n"


def footer_text(report: Report) -> str:
    parts = f", {report.parts} parts mapped then reduced" if report.parts > 1 else ""
    return (
        f"Models: {', '.join(report.models) or 'none'} · {report.calls} calls{parts} · "
        f"tokens: {report.prompt_tokens} prompt + {report.completion_tokens} completion · "
        f"cost: ${report.cost:.6f} · pipeline {report.pipeline}, run {report.run_id}, "
        f"{report.generated_at}"
    )


# --- Markdown -------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _report_markdown(report: Report) -> str:
    return (
        f"# {report.title}\n\n"
        f"Source: `{report.source}`  \nInstruction: {report.instruction}\n\n"
        f"---\n\n{report.answer.strip()}\n\n---\n\n"
        f"<sub>{footer_text(report)}</sub>\n"
    )


def _index_markdown(index: Index) -> str:
    lines = [
        f"# {index.pipeline}: run {index.run_id}",
        "",
        _summary(index),
        "",
        "| document | status | report / error | cost |",
        "| --- | --- | --- | ---: |",
    ]
    for entry in index.entries:
        if entry.report:
            detail = f"[{_md_cell(entry.title or entry.source)}](<{entry.report}>)"
        else:
            detail = _md_cell(entry.error or "")
        lines.append(f"| `{_md_cell(entry.source)}` | {entry.status} | {detail} | {_cost(entry)} |")
    return "\n".join(lines) + "\n"


def _summary(index: Index) -> str:
    jobs = ", ".join(str(j) for j in index.job_ids)
    return (
        f"{index.count('processed')} processed, {index.count('skipped')} skipped (unchanged), "
        f"{index.count('failed')} failed · cost ${index.cost:.6f} · preset {index.preset} · "
        f"jobs {jobs} · {index.started_at} to {index.finished_at}"
    )


# --- HTML -----------------------------------------------------------------------------------

_STYLE = """
body { font: 16px/1.55 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d232b; }
header .meta { color: #57606a; font-size: .9rem; }
article { border-top: 1px solid #d0d7de; border-bottom: 1px solid #d0d7de; padding: .5rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: .35rem .6rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
pre, code { background: #f6f8fa; border-radius: 4px; }
pre { padding: .6rem; overflow-x: auto; white-space: pre-wrap; }
footer { color: #57606a; font-size: .8rem; margin-top: 1rem; }
.processed { color: #1a7f37; } .skipped { color: #57606a; } .failed { color: #cf222e; }
td.cost { text-align: right; white-space: nowrap; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def markdown_to_html(text: str) -> str:
    """The answer's Markdown as HTML; raw HTML in it is shown as text, never run."""
    from markdown_it import MarkdownIt

    renderer = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return str(renderer.render(text))


def _report_html(report: Report) -> str:
    e = html.escape
    body = (
        f"<header>\n<h1>{e(report.title)}</h1>\n"
        f'<p class="meta">Source: <code>{e(report.source)}</code><br>'
        f"Instruction: {e(report.instruction)}</p>\n</header>\n"
        f"<article>\n{markdown_to_html(report.answer)}</article>\n"
        f"<footer>{e(footer_text(report))}</footer>"
    )
    return _page(report.title, body)


def _index_html(index: Index) -> str:
    e = html.escape
    rows = "\n".join(_index_row(entry) for entry in index.entries)
    body = (
        f"<header>\n<h1>{e(index.pipeline)}: run {index.run_id}</h1>\n"
        f'<p class="meta">{e(_summary(index))}<br>Instruction: {e(index.instruction)}</p>\n'
        "</header>\n<table>\n<thead><tr><th>document</th><th>status</th>"
        "<th>report / error</th><th>cost</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody>\n</table>"
    )
    return _page(f"{index.pipeline}: run {index.run_id}", body)


def _index_row(entry: IndexEntry) -> str:
    e = html.escape
    if entry.report:
        detail = (
            f'<a href="{e(quote(entry.report), quote=True)}">{e(entry.title or entry.source)}</a>'
        )
    else:
        detail = e(entry.error or "")
    return (
        f"<tr><td><code>{e(entry.source)}</code></td>"
        f'<td class="{e(entry.status)}">{e(entry.status)}</td><td>{detail}</td>'
        f'<td class="cost">{_cost(entry)}</td></tr>'
    )


def _cost(entry: IndexEntry) -> str:
    # Only a processed document spent anything in this run; a dash reads better than zeros.
    return f"${entry.cost:.6f}" if entry.status == "processed" else "—"
