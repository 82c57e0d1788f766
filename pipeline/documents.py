"""Plain text and a title out of the documents a pipeline reads: .txt, .md, .html, .pdf, .docx.

Parsers are well-kept libraries (pypdf, python-docx, BeautifulSoup on the standard
library's HTML parser). Whatever they raise on a damaged file is translated here,
once, into :class:`DocumentError`, which a run records against that file alone.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import MoaError

_BLANKS = re.compile(r"\n\s*\n\s*(\n\s*)+")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class DocumentError(MoaError):
    """A file that cannot be read as the document its name says it is."""


@dataclass(frozen=True)
class Document:
    text: str
    title: str


def read_document(path: Path) -> Document:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read the file: {exc.strerror or exc}") from exc
    return parse_document(path.name, data)


def parse_document(name: str, data: bytes) -> Document:
    """The text of a document given its file name (for the type) and its bytes."""
    suffix = Path(name).suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        known = ", ".join(sorted(READERS))
        raise DocumentError(f"unsupported file type {suffix or '(none)'!r}; readable: {known}")
    try:
        with warnings.catch_warnings():  # parsers warn about damage they work around
            warnings.simplefilter("ignore")
            text, title = reader(data)
    except DocumentError:
        raise
    except Exception as exc:  # any parser failure on a damaged file: that file's error
        kind = suffix.lstrip(".").upper()
        raise DocumentError(f"not a readable {kind} file ({type(exc).__name__}: {exc})") from exc
    text = _tidy(text)
    if not text:
        raise DocumentError("no text found in the document (a scanned PDF needs OCR)")
    return Document(text=text, title=(title or "").strip() or Path(name).stem)


def _tidy(text: str) -> str:
    lines = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return _BLANKS.sub("\n\n", lines).strip()


def _decode(data: bytes) -> str:
    if b"\x00" in data[:4096]:
        raise DocumentError("binary content in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # old Windows text, most often


def _plain(data: bytes) -> tuple[str, str]:
    return _decode(data), ""


def _markdown(data: bytes) -> tuple[str, str]:
    text = _decode(data)
    heading = _MD_HEADING.search(text)
    return text, heading.group(1) if heading else ""


def _html(data: bytes) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for hidden in soup(["script", "style", "noscript", "template", "head"]):
        hidden.decompose()
    return soup.get_text("\n"), title


def _pdf(data: bytes) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=False)
    pages = [page.extract_text() or "" for page in reader.pages]
    meta = reader.metadata
    title = str(meta.title) if meta is not None and meta.title else ""
    return "\n\n".join(pages), title


def _docx(data: bytes) -> tuple[str, str]:
    import docx

    document = docx.Document(io.BytesIO(data))
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        parts.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)
    title = document.core_properties.title or ""
    if not title:
        headings = (p.text for p in document.paragraphs if _is_heading(p))
        title = next((h for h in headings if h.strip()), "")
    return "\n\n".join(parts), title


def _is_heading(paragraph: Any) -> bool:
    name = getattr(paragraph.style, "name", None) or ""
    return bool(name.startswith(("Title", "Heading")))


READERS: dict[str, Callable[[bytes], tuple[str, str]]] = {
    ".txt": _plain,
    ".text": _plain,
    ".md": _markdown,
    ".markdown": _markdown,
    ".html": _html,
    ".htm": _html,
    ".pdf": _pdf,
    ".docx": _docx,
}
