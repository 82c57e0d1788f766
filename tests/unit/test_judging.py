"""Judge prompts and verdicts: what the judge is shown, and how its reply is read."""

from __future__ import annotations

import pytest

from pipeline.evalsets import EvalItem
from pipeline.judging import (
    grade_messages,
    pairwise_messages,
    parse_pairwise,
    parse_score,
    plan_judging,
    preference,
)


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("[[A]]", "A"),
        ("[[B]] B answers the question, A does not.", "B"),
        ("After weighing both: [[C]]", "tie"),
        ("[[tie]]", "tie"),
        ("[[ b ]]", "B"),
        ("My verdict: A", "A"),
        ("Final verdict is B.", "B"),
        ("B", "B"),
        (" (A). ", "A"),
        ("[[A]] and again [[A]]", "A"),
    ],
)
def test_pairwise_verdicts_are_read_from_explicit_marks(reply: str, value: str) -> None:
    verdict = parse_pairwise(reply)

    assert verdict.valid and verdict.value == value and verdict.problem is None


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("", "empty reply"),
        ("   ", "empty reply"),
        ("Both answers are fine, I think A is slightly better overall.", "no verdict found"),
        ("A is better than B", "no verdict found"),  # prose, not a verdict: never guessed
        ("[[A]] no wait, [[B]]", "conflicting verdicts (A, B)"),
        ("[[D]]", "no verdict found"),
        ("[sim model=judge seq=5] answer to: [Question] what?", "no verdict found"),
        ("\x00\ufffd}{[[", "no verdict found"),
        ("Verdict: Assistant", "no verdict found"),
    ],
)
def test_unreadable_pairwise_verdicts_are_invalid_with_a_reason(reply: str, problem: str) -> None:
    verdict = parse_pairwise(reply)

    assert not verdict.valid and verdict.value is None
    assert verdict.problem == problem


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("[[7]]", 7.0),
        ("[[ 8.5 ]] good", 8.5),
        ("[[9/10]]", 9.0),
        ("Rating: 6", 6.0),
        ("The score is 3 because it is wrong.", 3.0),
        ("10", 10.0),
        ("4/10.", 4.0),
        ("[[10]] and the rating: [[10]]", 10.0),
    ],
)
def test_ratings_are_read_from_explicit_marks(reply: str, value: float) -> None:
    assert parse_score(reply).value == value


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("[[0]]", "rating 0 is outside 1-10"),
        ("[[11]]", "rating 11 is outside 1-10"),
        ("[[3]] ... [[8]]", "conflicting verdicts (3, 8)"),
        ("This deserves a 7 or so.", "no verdict found"),  # a number in prose is not a rating
        ("[sim model=judge seq=5] answer to: [Question] 2+2", "no verdict found"),
        ("[[A]]", "no verdict found"),
        ("", "empty reply"),
    ],
)
def test_unreadable_ratings_are_invalid(reply: str, problem: str) -> None:
    verdict = parse_score(reply)

    assert verdict.value is None and verdict.problem == problem


def test_preference_counts_the_candidate_by_the_position_it_was_shown_in() -> None:
    a, b, tie, bad = (parse_pairwise(x) for x in ("[[A]]", "[[B]]", "[[C]]", "??"))

    assert [preference(a, "A"), preference(b, "A"), preference(tie, "A")] == [1.0, 0.0, 0.5]
    assert [preference(a, "B"), preference(b, "B")] == [0.0, 1.0]
    assert preference(bad, "A") is None


def test_pairwise_prompt_shows_both_answers_in_the_order_given_and_the_reference() -> None:
    item = EvalItem(id="m", turns=("What is 6 x 7?",), references=("42",))

    messages = pairwise_messages(item, ["It is 42."], ["It is 41."])

    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.startswith("[Question]\nWhat is 6 x 7?")
    assert user.index("[Reply A]\nIt is 42.") < user.index("[Reply B]\nIt is 41.")
    assert "[Reference answer]\n42" in user and "[[A]], [[B]] or [[C]]" in user


def test_second_turn_grading_shows_the_conversation_and_that_turns_reference() -> None:
    item = EvalItem(id="t", turns=("What is 3 + 4?", "Double it."), references=("7", "14"))

    user = grade_messages(item, ["7", "It is 14."], turn=2)[1]["content"]

    assert "User: What is 3 + 4?\n\nAssistant: 7" in user
    assert "[Question]\nDouble it." in user and "[Reply]\nIt is 14." in user
    assert "[Reference answer]\n14" in user and "[Reference answer]\n7" not in user


def test_multi_turn_pairwise_compares_whole_conversations() -> None:
    item = EvalItem(id="t", turns=("Hi?", "And then?"))

    user = pairwise_messages(item, ["a1", "a2"], ["b1", "b2"])[1]["content"]

    assert (
        "[Conversation with assistant A]\nUser: Hi?\n\nAssistant A: a1\n\nUser: And then?\n\nAssistant A: a2"
        in user
    )
    assert "Assistant B: b2" in user


def test_plan_judges_answered_items_both_ways_and_rates_only_open_ones() -> None:
    items = [
        EvalItem(id="open", turns=("Tell me a joke.",)),
        EvalItem(id="math", turns=("2+2?",), answer="4", kind="number"),
        EvalItem(id="two", turns=("Hi?", "More?")),
    ]
    answers = {
        "base": {"open": ["b"], "math": ["4"], "two": ["b1", "b2"]},
        "moa": {"open": ["m"], "math": ["4"], "two": ["m1", None]},  # turn 2 failed
    }
    baseline = {"open": ("b",), "math": ("4",), "two": ("b1", "b2")}

    tasks = plan_judging(items, answers, baseline, baseline_preset="base")

    kinds = sorted((t.preset, t.item, t.kind, t.turn, t.position or "") for t in tasks)
    assert kinds == [
        ("base", "open", "rating", 1, ""),
        ("base", "two", "rating", 1, ""),
        ("base", "two", "rating", 2, ""),
        ("moa", "math", "pairwise", 1, "A"),
        ("moa", "math", "pairwise", 1, "B"),
        ("moa", "open", "pairwise", 1, "A"),
        ("moa", "open", "pairwise", 1, "B"),
        ("moa", "open", "rating", 1, ""),
    ]
    swapped = [t for t in tasks if t.preset == "moa" and t.item == "open"]
    assert "[Reply A]\nm" in swapped[0].messages[1]["content"]
    assert "[Reply A]\nb" in swapped[1].messages[1]["content"]
