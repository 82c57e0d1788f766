"""Exact-match scoring: the answer a free text gives, compared with the expected one."""

from __future__ import annotations

import pytest

from pipeline.exactmatch import extract, is_correct


@pytest.mark.parametrize(
    ("text", "expected", "kind", "correct"),
    [
        ("12 + 7 = 19.", "19", "number", True),
        ("The answer is 19", "19", "number", True),
        ("I think it is 19, not 18", "19", "number", False),  # the last number counts
        ("Answer: 1,000.50", "1000.5", "number", True),
        ("#### 42\nso 41 was wrong", "42", "number", True),  # a marked answer beats the last number
        ("There are 60 minutes in an hour.", "60", "number", True),
        ("-3", "-3", "number", True),
        ("no number here", "3", "number", False),
        ("A spider has eight legs.", "8", "number", True),
        ("Seven, or 9", "9", "number", True),  # digits beat words
        ("Someone is here", "1", "number", False),  # "one" inside a word is not a number
        ("", "3", "number", False),
        ("B", "B", "choice", True),
        ("(b) dolphin", "B", "choice", True),
        ("The answer is C.", "C", "choice", True),
        ("A. shark", "B", "choice", False),
        ("A shark is a mammal.", "A", "choice", False),  # the article "A" is not a choice
        ("(A) or (B)", "B", "choice", False),  # two choices: none extracted
        ("Paris.", "Paris", "text", True),
        ("The capital of France is Paris", "paris", "text", True),
        ("Parisian food is great", "Paris", "text", False),  # whole words only
        ("New York City", "York", "text", True),
        ("Rome", "Milan", "text", False),
    ],
)
def test_is_correct(text: str, expected: str, kind: str, correct: bool) -> None:
    assert is_correct(text, expected, kind) is correct


def test_a_missing_answer_is_not_correct_and_unknown_kinds_are_refused() -> None:
    assert is_correct(None, "4", "number") is False
    assert extract("nothing", "choice") is None
    with pytest.raises(ValueError):
        extract("4", "essay")
