"""Judge prompts and verdicts: pairwise (AlpacaEval-style) and single-answer grading
(MT-Bench-style), rendered as chat messages, and the judge's reply read back.

The approach follows Zheng et al. 2023 ("Judging LLM-as-a-Judge with MT-Bench and Chatbot
Arena", arXiv:2306.05685): a pairwise judge is asked twice with the answers swapped, to
cancel its position bias; a grading judge gives 1-10 and sees a reference answer where one
exists; a two-turn question is judged on the whole conversation. The wording is our own.
Each system message ends with one worked example, which base models need to answer in the
expected form and chat models ignore.

A verdict is read only from an explicit mark (``[[A]]``, ``[[B]]``, ``[[C]]`` for a tie,
``[[7]]`` for a rating, or ``Verdict: A`` / ``Rating: 7``); a reply with no mark, or with
marks that disagree, is invalid, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.evalsets import EvalItem
from pipeline.prompts import Message

PAIRWISE_SYSTEM = """You are an impartial judge. You are shown a user's question (or a \
conversation) and the replies of two assistants, A and B. Decide which reply serves the user \
better: it follows the instructions, is correct, helpful, relevant and as detailed as the \
question needs. The order in which the replies are shown and their length must not sway you. \
Give your verdict first, as [[A]] if A is better, [[B]] if B is better, or [[C]] for a tie, \
then at most one sentence of reason.

Example:

Question: [Question] What is 2 + 2? [Reply A] 5 [Reply B] 2 + 2 = 4.

Answer: [[B]] B is correct, A is not."""

GRADE_SYSTEM = """You are an impartial judge. You are shown a user's question (or a \
conversation) and an assistant's reply, sometimes with a reference answer. Rate the reply \
from 1 (useless or wrong) to 10 (excellent): is it correct, helpful, relevant and as detailed \
as the question needs? If a reference answer is given, a reply that disagrees with it is \
wrong. Give your rating first, as [[N]] with N from 1 to 10, then at most one sentence of \
reason.

Example:

Question: [Question] What is the capital of Italy? [Reply] Rome is the capital of Italy.

Answer: [[9]] Correct and to the point."""


# --- prompts ----------------------------------------------------------------------------------


def _conversation(item: EvalItem, answers: Sequence[str], turns: int, label: str) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in item.history]
    for index in range(turns):
        lines.append(f"User: {item.turns[index]}")
        lines.append(f"{label}: {answers[index] if index < len(answers) else ''}")
    return "\n\n".join(lines)


def pairwise_messages(item: EvalItem, a: Sequence[str], b: Sequence[str]) -> list[Message]:
    """Judge two answers (one per turn) to the same item: A is shown first."""
    turns = min(len(item.turns), len(a), len(b))
    if turns <= 1 and not item.history:
        body = f"[Question]\n{item.turns[0]}\n\n[Reply A]\n{a[0]}\n\n[Reply B]\n{b[0]}"
    else:
        body = (
            f"[Conversation with assistant A]\n{_conversation(item, a, turns, 'Assistant A')}"
            f"\n\n[Conversation with assistant B]\n{_conversation(item, b, turns, 'Assistant B')}"
            "\n\nJudge the assistants' replies over the whole conversation."
        )
    reference = _references(item, turns)
    task = "Which reply is better? Give [[A]], [[B]] or [[C]] for a tie."
    user = "\n\n".join(part for part in (body, reference, task) if part)
    return [Message(role="system", content=PAIRWISE_SYSTEM), Message(role="user", content=user)]


def grade_messages(item: EvalItem, answers: Sequence[str], turn: int) -> list[Message]:
    """Grade the assistant's reply to ``turn`` (1-based), shown with the turns before it."""
    if turn == 1 and not item.history:
        body = f"[Question]\n{item.turns[0]}"
        reply = answers[0]
    else:
        earlier = _conversation(item, answers, turn - 1, "Assistant")
        body = f"[Conversation so far]\n{earlier}\n\n[Question]\n{item.turns[turn - 1]}"
        reply = answers[turn - 1]
    reference = _references(item, turn, only_last=True)
    task = "Rate the reply to the last question from 1 to 10, as [[N]]."
    user = "\n\n".join(part for part in (body, reference, f"[Reply]\n{reply}", task) if part)
    return [Message(role="system", content=GRADE_SYSTEM), Message(role="user", content=user)]


def _references(item: EvalItem, turns: int, only_last: bool = False) -> str:
    refs = item.references[:turns]
    if not refs:
        return ""
    if only_last:
        return f"[Reference answer]\n{refs[-1]}" if len(refs) == turns else ""
    if len(refs) == 1:
        return f"[Reference answer]\n{refs[0]}"
    return "\n\n".join(f"[Reference answer, turn {i}]\n{r}" for i, r in enumerate(refs, 1))


# --- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    value: str | float | None  # "A" | "B" | "tie" for pairwise; 1..10 for a rating
    problem: str | None = None  # why it is invalid

    @property
    def valid(self) -> bool:
        return self.value is not None


_PAIR_MARK = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_PAIR_WORD = re.compile(r"\bverdict\s*(?:is|:)\s*\[?\s*(A|B|C|tie)\b(?!['\w])", re.IGNORECASE)
_PAIR_BARE = re.compile(r"\s*\[?\(?\s*(A|B)\s*\)?\]?\s*[.!]?\s*")
_SCORE = r"(\d+(?:\.\d+)?)"
_SCORE_MARK = re.compile(r"\[\[\s*" + _SCORE + r"\s*(?:/\s*10\s*)?\]\]")
_SCORE_WORD = re.compile(r"\b(?:rating|score)\s*(?:is|:)\s*\[?\s*" + _SCORE, re.IGNORECASE)
_SCORE_BARE = re.compile(r"\s*" + _SCORE + r"\s*(?:/\s*10)?\s*[.!]?\s*")


def parse_pairwise(text: str) -> Verdict:
    """``A``, ``B`` or ``tie`` from a pairwise judge's reply, or an invalid verdict."""
    found = {_pair_value(m) for m in _PAIR_MARK.findall(text)}
    if not found:
        found = {_pair_value(m) for m in _PAIR_WORD.findall(text)}
    if not found and (bare := _PAIR_BARE.fullmatch(text)):
        found = {bare.group(1).upper()}
    return _one(found, text)


def _pair_value(mark: str) -> str:
    upper = mark.upper()
    return "tie" if upper in ("C", "TIE") else upper


SCORE_RANGE = (1.0, 10.0)  # MT-Bench's scale


def parse_score(text: str) -> Verdict:
    """A 1-10 rating from a grading judge's reply, or an invalid verdict."""
    found = {float(m) for m in _SCORE_MARK.findall(text)}
    if not found:
        found = {float(m) for m in _SCORE_WORD.findall(text)}
    if not found and (bare := _SCORE_BARE.fullmatch(text)):
        found = {float(bare.group(1))}
    verdict = _one(found, text)
    low, high = SCORE_RANGE
    if isinstance(verdict.value, float) and not low <= verdict.value <= high:
        return Verdict(None, f"rating {verdict.value:g} is outside {low:g}-{high:g}")
    return verdict


def _one(found: set[str] | set[float], text: str) -> Verdict:
    if len(found) == 1:
        (value,) = found
        return Verdict(value)
    if found:
        marks = ", ".join(sorted(f"{v:g}" if isinstance(v, float) else v for v in found))
        return Verdict(None, f"conflicting verdicts ({marks})")
    return Verdict(None, "no verdict found" if text.strip() else "empty reply")


def preference(verdict: Verdict, candidate_is: str) -> float | None:
    """1 if the candidate (shown as ``A`` or ``B``) won, 0.5 for a tie, 0 if it lost."""
    if verdict.value == "tie":
        return 0.5
    if verdict.value in ("A", "B"):
        return 1.0 if verdict.value == candidate_is else 0.0
    return None


# --- what to judge ----------------------------------------------------------------------------

Answers = dict[str, list[str | None]]  # item id -> the answer to each turn (None: it failed)


@dataclass(frozen=True)
class JudgeTask:
    preset: str
    item: str
    kind: str  # "pairwise" | "rating"
    turn: int  # rating: the turn graded; pairwise: the turns compared
    position: str | None  # pairwise: the candidate is shown as "A" or "B"
    messages: list[Message]


def complete(answers: Sequence[str | None], turns: int) -> list[str] | None:
    """The answers to every turn, or None if one is missing."""
    done = [a for a in answers[:turns] if a is not None]
    return done if len(done) == turns else None


def plan_judging(
    items: Sequence[EvalItem],
    answers: dict[str, Answers],
    baseline: dict[str, tuple[str, ...]],
    baseline_preset: str | None,
) -> list[JudgeTask]:
    """Pairwise tasks (both orders) against the baseline for every answered item, and a
    rating of every answered turn of the items that have no exact-match answer."""
    tasks: list[JudgeTask] = []
    for preset, by_item in answers.items():
        for item in items:
            given = complete(by_item.get(item.id, []), len(item.turns))
            if given is None:
                continue
            if preset != baseline_preset:
                tasks.extend(_pairwise(preset, item, given, baseline.get(item.id, ())))
            if item.answer is None:
                tasks.extend(
                    JudgeTask(preset, item.id, "rating", turn, None,
                              grade_messages(item, given, turn))
                    for turn in range(1, len(item.turns) + 1)
                )  # fmt: skip
    return tasks


def _pairwise(
    preset: str, item: EvalItem, given: list[str], base: Sequence[str]
) -> list[JudgeTask]:
    turns = min(len(given), len(base))
    if turns == 0:
        return []
    mine, theirs = given[:turns], list(base[:turns])
    return [
        JudgeTask(preset, item.id, "pairwise", turns, "A", pairwise_messages(item, mine, theirs)),
        JudgeTask(preset, item.id, "pairwise", turns, "B", pairwise_messages(item, theirs, mine)),
    ]
