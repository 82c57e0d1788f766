"""Adaptive depth: after a proposer layer, tell whether its proposals agree enough
that the item can stop there and skip the layers still to come."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from difflib import SequenceMatcher
from itertools import combinations


@dataclass(frozen=True)
class Agreement:
    text: str  # the output to keep: the first proposal giving the agreed answer
    reason: str  # human-readable, for the item's record


# A number as people write one: thousands with commas, an optional sign and decimals.
_NUMBER = r"(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)"
_ANSWER = r"(?i:\banswer\b(?:\s+is)?)\s*:?[\s*]*"  # "Answer:", "the answer is", "**Answer:** "
# A bare letter must end its line's wording ("the answer is C."), else "the answer
# is A bit longer" would read as choice A; a parenthesised letter is clear in any case.
_CHOICE = r"(?:\(([A-Ja-j])\)|\b([A-J])\b(?![^\S\n]*\w))"

# Most explicit marker first: a later, weaker marker may be part of the working.
_NUMBER_MARKERS = (
    re.compile(r"####\s*\$?" + _NUMBER),  # GSM8K's final-answer line
    re.compile(r"\\boxed\{\s*\$?" + _NUMBER + r"\s*\}"),
    re.compile(_ANSWER + r"\$?" + _NUMBER + r"(?!\d)"),
)
_CHOICE_MARKER = re.compile(_ANSWER + r"(?i:option\s+)?" + _CHOICE)
_EQUALS = re.compile(r"=\s*\$?" + _NUMBER + r"(?![\d*/^+(])")
_WHOLE_NUMBER = re.compile(r"\$?" + _NUMBER)
_WHOLE_CHOICE = re.compile(r"\(?([A-Ja-j])\)?")
_TRAILING = ".,;:!?"


def normalize(text: str) -> str:
    """Lowercased, whitespace collapsed, trailing punctuation stripped."""
    return " ".join(text.lower().split()).rstrip(_TRAILING).rstrip()


def extract_answer(text: str) -> str:
    """The short answer a text gives: a final number, else a choice letter, else the text."""
    for find in _FINDERS:
        found = find(text)
        if found is not None:
            return found
    return normalize(text)


def _number(raw: str) -> str:
    """``1,000.50`` -> ``1000.5``; ``42.0`` -> ``42``."""
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the patterns only match numbers
        return raw
    if value == value.to_integral_value():
        return str(int(value))  # also turns -0 into 0
    return format(value.normalize(), "f")


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    # The last statement wins: answers are usually restated at the end.
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def _marked_number(text: str) -> str | None:
    for pattern in _NUMBER_MARKERS:
        match = _last(pattern, text)
        if match:
            return _number(match.group(1))
    return None


def _marked_choice(text: str) -> str | None:
    match = _last(_CHOICE_MARKER, text)
    return (match.group(1) or match.group(2)).upper() if match else None


def _equals_number(text: str) -> str | None:
    match = _last(_EQUALS, text)
    return _number(match.group(1)) if match else None


def _whole(text: str) -> str | None:
    """A text that is nothing but a number or a choice letter ("42.", "(b)")."""
    bare = text.strip().rstrip(_TRAILING).strip()
    if _WHOLE_NUMBER.fullmatch(bare):
        return _number(bare.lstrip("$"))
    match = _WHOLE_CHOICE.fullmatch(bare)
    return match.group(1).upper() if match else None


# An "Answer: (B)" beats an "= 4" in the working of a multiple-choice question.
_FINDERS: tuple[Callable[[str], str | None], ...] = (
    _marked_number,
    _marked_choice,
    _equals_number,
    _whole,
)


def agreement(texts: Sequence[str], method: str, threshold: float) -> Agreement | None:
    """The agreement of a layer's proposals, or None when they do not agree.

    ``exact``: every extracted answer is the same. ``similarity``: every pair of
    normalized texts has a difflib ratio of at least ``threshold``.
    """
    # One proposal agrees with nobody, and an empty answer is no answer.
    if len(texts) < 2 or any(not text.strip() for text in texts):
        return None
    if method == "exact":
        return _exact(texts)
    if method == "similarity":
        return _similar(texts, threshold)
    raise ValueError(f"unknown agreement method {method!r} (exact or similarity)")


def _exact(texts: Sequence[str]) -> Agreement | None:
    answers = {extract_answer(text) for text in texts}
    if len(answers) != 1:
        return None
    (answer,) = answers
    reason = f"all {len(texts)} proposals give the same answer {_short(answer)!r}"
    return Agreement(texts[0], reason)


def _similar(texts: Sequence[str], threshold: float) -> Agreement | None:
    normalized = [normalize(text) for text in texts]
    lowest = min(SequenceMatcher(None, a, b).ratio() for a, b in combinations(normalized, 2))
    if lowest < threshold:
        return None
    reason = (
        f"all {len(texts)} proposals are alike (lowest similarity {lowest:.2f} >= {threshold:.2f})"
    )
    return Agreement(texts[0], reason)


def _short(answer: str, limit: int = 40) -> str:
    # A fallback answer is a whole text; the reason only needs its start.
    return answer if len(answer) <= limit else answer[: limit - 1] + "…"
