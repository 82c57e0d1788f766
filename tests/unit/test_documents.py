"""Document readers: the text and title of each kind, and a clear error for a damaged file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.documents import DocumentError, read_document
from tests.documents import write_corrupt_pdf, write_docx, write_html, write_pdf

TEXT = "The supplier delivers by 1 March.\n\nLate delivery costs 2% a week."


def test_plain_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "memo.md").write_text(f"intro\n\n## Delivery terms\n\n{TEXT}", encoding="utf-8")
    txt = read_document(tmp_path / "notes.txt")
    assert (txt.text, txt.title) == (TEXT, "notes")
    md = read_document(tmp_path / "memo.md")
    assert md.title == "Delivery terms"
    assert "Late delivery costs 2% a week." in md.text


def test_text_in_an_old_windows_encoding_is_read(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_bytes("Café déjà vu".encode("cp1252"))
    assert read_document(tmp_path / "old.txt").text == "Café déjà vu"


def test_html_keeps_the_text_and_drops_scripts_and_styles(tmp_path: Path) -> None:
    doc = read_document(write_html(tmp_path / "t.html", "A &amp; B agree.\n\nSigned.", "Ticket 7"))
    assert doc.title == "Ticket 7"
    assert "A & B agree." in doc.text and "Signed." in doc.text
    assert "do not read me" not in doc.text and "color" not in doc.text


def test_pdf_text_and_title(tmp_path: Path) -> None:
    doc = read_document(write_pdf(tmp_path / "c.pdf", TEXT, title="Supply contract"))
    assert doc.title == "Supply contract"
    assert "Late delivery costs 2% a week." in doc.text


def test_docx_paragraphs_tables_and_heading_as_title(tmp_path: Path) -> None:
    doc = read_document(write_docx(tmp_path / "lease.docx", TEXT, heading="Lease terms"))
    assert doc.title == "Lease terms"
    assert "The supplier delivers by 1 March." in doc.text
    assert "clause | penalty" in doc.text


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.pdf", None, "not a readable PDF file"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "not a readable DOCX file"),
        ("binary.txt", b"\x00\x01\x02text", "binary content"),
        ("empty.md", b"   \n\n ", "no text found"),
        ("sheet.xlsx", b"whatever", "unsupported file type '.xlsx'"),
    ],
)
def test_an_unreadable_file_is_a_document_error(
    tmp_path: Path, name: str, content: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if content is None:
        write_corrupt_pdf(path)
    else:
        path.write_bytes(content)
    with pytest.raises(DocumentError, match=expected):
        read_document(path)


def test_a_missing_file_is_a_document_error(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="cannot read the file"):
        read_document(tmp_path / "gone.txt")
