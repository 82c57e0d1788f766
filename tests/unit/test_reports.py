"""Reports and the index in Markdown, HTML (escaped) and JSON."""

from __future__ import annotations

import json
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from pipeline.reports import Index, IndexEntry, Report, render_index, render_report

REPORT = Report(
    title="Supply <contract> & co",
    source="contracts/a&b.pdf",
    pipeline="contracts",
    instruction="List the risks as a table",
    answer="| risk | level |\n| --- | --- |\n| late <b>delivery</b> | high |\n\n<script>alert(1)</script>",
    models=("gpt-4o", "llama-70b"),
    prompt_tokens=1200,
    completion_tokens=340,
    cost=Decimal("0.0123"),
    calls=7,
    parts=3,
    run_id=5,
    generated_at="2026-11-22T02:00:00+00:00",
)
INDEX = Index(
    pipeline="contracts",
    run_id=5,
    instruction="List the risks",
    preset="moa-lite",
    started_at="2026-11-22T02:00:00+00:00",
    finished_at="2026-11-22T02:03:00+00:00",
    entries=[
        IndexEntry("a&b.pdf", "processed", "A <b>", "a&b.pdf.html", cost=Decimal("0.01")),
        IndexEntry("old.txt", "skipped", "Old", "old.txt.html"),
        IndexEntry("bad.pdf", "failed", error="not a readable PDF file (<EOF>)"),
    ],
    cost=Decimal("0.01"),
    job_ids=(11, 12),
)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [v or "" for k, v in attrs if k == "href"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Collect:
    collector = _Collect()
    collector.feed(page)
    return collector


def test_html_report_escapes_every_text_and_renders_the_answers_markdown() -> None:
    page = render_report(REPORT, "html")
    parsed = _parse(page)
    assert "script" not in parsed.tags and "b" not in parsed.tags  # shown, never run
    assert "<script>alert(1)</script>" in "".join(parsed.text)
    assert "table" in parsed.tags  # the answer's Markdown table is a table
    text = "".join(parsed.text)
    assert "Supply <contract> & co" in text and "contracts/a&b.pdf" in text
    assert "gpt-4o, llama-70b" in text and "1200 prompt + 340 completion" in text
    assert "$0.012300" in text and "3 parts mapped then reduced" in text


def test_html_index_links_reports_and_shows_errors() -> None:
    parsed = _parse(render_index(INDEX, "html"))
    assert parsed.links == ["a%26b.pdf.html", "old.txt.html"]
    text = "".join(parsed.text)
    assert "not a readable PDF file (<EOF>)" in text
    assert "1 processed, 1 skipped (unchanged), 1 failed" in text
    assert "b" not in parsed.tags


def test_markdown_report_and_index() -> None:
    report = render_report(REPORT, "markdown")
    assert report.startswith("# Supply <contract> & co\n")
    assert "Source: `contracts/a&b.pdf`" in report and "| late <b>delivery</b> | high |" in report
    index = render_index(INDEX, "markdown")
    assert "| `a&b.pdf` | processed | [A <b>](<a&b.pdf.html>) | $0.010000 |" in index
    assert "| `bad.pdf` | failed | not a readable PDF file (<EOF>) | — |" in index


@pytest.mark.parametrize(
    ("render", "cost"),
    [
        (lambda: render_report(REPORT, "json"), "0.0123"),
        (lambda: render_index(INDEX, "json"), "0.01"),
    ],
)
def test_json_is_parseable_and_keeps_money_exact(render, cost) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(render())
    assert data["cost"] == cost
