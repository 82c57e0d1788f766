"""Early stop: the answer a proposal gives, and when a layer's proposals agree."""

from __future__ import annotations

import pytest

from pipeline.consensus import Agreement, agreement, extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("6 * 7 = 42", "42"),
        ("She pays 3 + 0.5 = 3.5 dollars in all", "3.5"),
        ("Natalia sold 48 clips in April.\n#### 72", "72"),
        ("So the total is \\boxed{1,250}.", "1250"),
        ("**Answer:** 1,000,000", "1000000"),
        ("The answer is 42.0", "42"),
        ("Answer: -3.50", "-3.5"),
        ("42.", "42"),
        ("The answer is 3, though 2 + 2 = 4.", "3"),
        ("Working: 2 + 2 = 4\n#### 4", "4"),
    ],
)
def test_a_stated_final_number_is_extracted_and_normalized(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: (B)", "B"),
        ("After weighing the options, the answer is C.", "C"),
        ("The correct answer is (d) because it is the only prime.", "D"),
        ("Answer: B) Paris", "B"),
        ("2 + 2 = 4, so the answer is (A).", "A"),
        ("(b)", "B"),
    ],
)
def test_a_clear_choice_letter_is_extracted(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The Sky is   BLUE!  ", "the sky is blue"),
        ("The answer is A bit longer than that.", "the answer is a bit longer than that"),
        ("Paris", "paris"),
        ("", ""),
    ],
)
def test_otherwise_the_whole_text_is_normalized(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_identical_texts_agree_and_the_first_is_kept() -> None:
    found = agreement(["The answer is 42."] * 3, "exact", 0.9)
    assert found == Agreement("The answer is 42.", "all 3 proposals give the same answer '42'")


def test_the_same_number_phrased_differently_agrees_under_exact() -> None:
    texts = ["6 times 7 = 42", "The answer is 42.0", "Step by step...\n#### 42"]
    found = agreement(texts, "exact", 0.9)
    assert found is not None
    assert found.text == "6 times 7 = 42"
    assert found.reason == "all 3 proposals give the same answer '42'"


def test_different_numbers_do_not_agree() -> None:
    assert agreement(["The answer is 42.", "The answer is 41."], "exact", 0.9) is None


def test_choices_agree_by_letter() -> None:
    found = agreement(["Answer: (B)", "the answer is B.", "B"], "exact", 0.9)
    assert found is not None and found.reason.endswith("answer 'B'")
    assert agreement(["Answer: (B)", "Answer: (C)"], "exact", 0.9) is None


def test_free_text_agrees_only_when_it_is_the_same_after_normalizing() -> None:
    assert agreement(["Paris.", "  paris"], "exact", 0.9) is not None
    assert agreement(["Paris", "Lyon"], "exact", 0.9) is None


def test_a_long_answer_is_shortened_in_the_reason() -> None:
    found = agreement(["word " * 30] * 2, "exact", 0.9)
    assert found is not None and "…'" in found.reason and len(found.reason) < 100


@pytest.mark.parametrize("method", ["exact", "similarity"])
def test_a_single_text_never_agrees(method: str) -> None:
    assert agreement(["The answer is 42."], method, 0.5) is None
    assert agreement([], method, 0.5) is None


@pytest.mark.parametrize("method", ["exact", "similarity"])
def test_empty_texts_never_agree(method: str) -> None:
    assert agreement(["", ""], method, 0.5) is None
    assert agreement(["  \n", "\t"], method, 0.5) is None
    assert agreement(["The answer is 42.", " "], method, 0.5) is None


def test_similarity_threshold_is_inclusive() -> None:
    # "abcd" vs "abce": 3 of 8 characters match twice over, ratio 2 * 3 / 8 = 0.75.
    found = agreement(["abcd", "abce"], "similarity", 0.75)
    assert found == Agreement("abcd", "all 2 proposals are alike (lowest similarity 0.75 >= 0.75)")
    assert agreement(["abcd", "abce"], "similarity", 0.76) is None


def test_similarity_compares_normalized_text() -> None:
    found = agreement(["The sky is blue.", "the  sky is BLUE"], "similarity", 1.0)
    assert found is not None and found.text == "The sky is blue."


def test_similarity_needs_every_pair_to_be_alike() -> None:
    # The first two are alike, the third is not alike to either.
    texts = ["abcd", "abce", "wxyz"]
    assert agreement(texts, "similarity", 0.7) is None
    assert agreement(texts[:2], "similarity", 0.7) is not None


def test_an_unknown_method_is_an_error() -> None:
    with pytest.raises(ValueError, match="vote"):
        agreement(["a", "a"], "vote", 0.9)
