"""Documents of every readable kind, written the way their own tools write them."""

from __future__ import annotations

from pathlib import Path


def write_pdf(path: Path, text: str, title: str = "") -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def write_docx(path: Path, text: str, heading: str = "") -> Path:
    import docx

    document = docx.Document()
    if heading:
        document.add_heading(heading, level=1)
    for paragraph in text.split("\n\n"):
        document.add_paragraph(paragraph)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "clause"
    table.rows[0].cells[1].text = "penalty"
    document.save(str(path))
    return path


def write_html(path: Path, text: str, title: str = "") -> Path:
    body = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
    path.write_text(
        f"<!doctype html><html><head><title>{title}</title><style>p {{color: red}}</style>"
        f"<script>var hidden = 'do not read me';</script></head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return path


def write_corrupt_pdf(path: Path) -> Path:
    # A PDF header, then garbage where the objects and the cross-reference table should be.
    path.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n\x00\xff\xfe garbage\n")
    return path
