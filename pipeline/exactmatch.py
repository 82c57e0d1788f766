"""Exact-match scoring where an answer can be extracted from free text: no judge needed.

``number``: a marked answer ("Answer: 42", "#### 42", "\\boxed{42}", "= 42", the same rules
as early stopping, :mod:`pipeline.consensus`), else the last number in the text, else the
last number word up to twenty.
``choice``: a marked letter ("Answer: (B)", "the answer is B"), a text that is only a letter,
else a lone parenthesised letter. ``text``: the expected words appear, as whole words, in the
normalized answer (short factual answers such as capitals).
"""

from __future__ import annotations

import re

from pipeline.consensus import extract_answer, normalize

_LAST_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_PAREN_CHOICE = re.compile(r"\(([A-Ja-j])\)")
_CHOICE_START = re.compile(r"\s*([A-J])[.):](?:\s|$)")
_LETTER = re.compile(r"[A-J]")
_WORDS = re.compile(r"[^\w\s]")
# Small models write small numbers as words ("A spider has eight legs").
_SMALL_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(_SMALL_NUMBERS)}
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)


def extract(text: str, kind: str) -> str | None:
    """The answer a text gives, as the kind of answer expected; None when there is none."""
    if kind == "number":
        return _number(text)
    if kind == "choice":
        return _choice(text)
    if kind == "text":
        return normalize(text) or None
    raise ValueError(f"unknown answer kind {kind!r}")


def is_correct(text: str | None, expected: str, kind: str) -> bool:
    if not text:
        return False
    found = extract(text, kind)
    if found is None:
        return False
    if kind == "number":
        return found == _canonical_number(expected)
    if kind == "choice":
        return found == expected.strip().strip("()").upper()
    wanted = _plain_words(expected)
    return bool(wanted) and f" {wanted} " in f" {_plain_words(found)} "


def _number(text: str) -> str | None:
    marked = extract_answer(text)
    if _LAST_NUMBER.fullmatch(marked):
        return _canonical_number(marked)
    numbers = _LAST_NUMBER.findall(text)
    if numbers:
        return _canonical_number(numbers[-1])
    words = _NUMBER_WORD.findall(text)
    return _NUMBER_WORDS[words[-1].lower()] if words else None


def _canonical_number(raw: str) -> str:
    """``1,000.50`` and ``1000.5`` compare equal; so do ``42`` and ``42.0``."""
    cleaned = raw.strip().rstrip(".").replace(",", "").lstrip("$")
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return str(int(value)) if value.is_integer() else repr(value)


def _choice(text: str) -> str | None:
    marked = extract_answer(text)
    if _LETTER.fullmatch(marked.upper()) and len(marked) == 1:
        return marked.upper()
    letters = {str(m).upper() for m in _PAREN_CHOICE.findall(text)}
    if len(letters) == 1:
        return letters.pop()
    start = _CHOICE_START.match(text)
    return str(start.group(1)) if start else None


def _plain_words(text: str) -> str:
    return " ".join(_WORDS.sub(" ", normalize(text)).split())
