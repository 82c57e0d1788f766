"""Evaluation sets: the formats `moa eval --data` reads, as one list of :class:`EvalItem`.

* AlpacaEval (a JSON list of ``instruction``/``output``/``generator``): one-turn open
  questions, each with a baseline answer for pairwise judging.
* MT-Bench (``question.jsonl``: ``question_id``, ``category``, ``turns``): two-turn
  questions; GPT-4 reference answers are read from ``*reference*.jsonl`` beside it.
* Plain JSONL, ours: ``custom_id`` (or ``id``), ``prompt`` or ``turns`` (or ``messages``
  ending in a user turn), and optionally ``answer`` (an exact-match answer), ``kind``
  (``number``, ``choice`` or ``text``), ``reference``, ``baseline``, ``category``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from pipeline.errors import MoaError
from pipeline.prompts import Message

KINDS = ("number", "choice", "text")


class EvalDataError(MoaError):
    """The evaluation data cannot be read; the message names the file and the row."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    turns: tuple[str, ...]  # the user's turns; turn i is asked after the answer to turn i-1
    history: tuple[Message, ...] = ()  # messages before the first turn (a system prompt, ...)
    answer: str | None = None  # for exact match
    kind: str | None = None  # how to extract the answer: number, choice, text
    references: tuple[str, ...] = ()  # reference answers per turn, given to the judge
    baseline: tuple[str, ...] = ()  # a baseline's answers per turn, for pairwise judging
    category: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSet:
    name: str
    items: list[EvalItem]
    files: tuple[Path, ...]  # every file the set was read from, for its hash
    baseline_name: str | None = None  # who wrote the items' baseline answers

    def limited(self, limit: int | None) -> EvalSet:
        if limit is None:
            return self
        return EvalSet(self.name, self.items[:limit], self.files, self.baseline_name)

    def digest(self) -> str:
        """SHA-256 over the files' bytes, so a stored run names exactly the data it saw."""
        return data_hash(self.files)


def data_hash(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_eval_set(path: Path) -> EvalSet:
    """Read any supported format, told apart by its content."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no such file")
    if path.suffix == ".json":
        return read_alpaca_eval(path)
    rows = _jsonl(path)
    if rows and "question_id" in rows[0] and "turns" in rows[0]:
        return _mt_bench(path, rows)
    return _plain(path, rows)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path} line {number}: invalid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path} line {number}: expected a JSON object")
            rows.append(row)
    return rows


def read_alpaca_eval(path: Path) -> EvalSet:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(rows, list):
        raise EvalDataError(f"{path}: expected a JSON list of AlpacaEval records")
    items = []
    generators = set()
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise EvalDataError(f"{path} record {index}: 'instruction' (a string) is required")
        output = row.get("output")
        if isinstance(output, str):
            generators.add(str(row.get("generator", "baseline")))
        items.append(EvalItem(
            id=f"alpaca-{index:04d}", turns=(row["instruction"],),
            baseline=(output,) if isinstance(output, str) else (),
            category=str(row.get("dataset", "")),
        ))  # fmt: skip
    name = ", ".join(sorted(generators)) or None
    return EvalSet("alpaca_eval", items, (path,), name)


def _mt_bench(path: Path, rows: list[dict[str, Any]]) -> EvalSet:
    reference_files = sorted(path.parent.glob("*reference*.jsonl"))
    references = _mt_references(reference_files)
    items = []
    for number, row in enumerate(rows, start=1):
        turns = row.get("turns")
        if not _strings(turns):
            raise EvalDataError(f"{path} line {number}: 'turns' must be a list of strings")
        qid = row["question_id"]
        items.append(EvalItem(
            id=f"mt-{qid}", turns=tuple(turns), category=str(row.get("category", "")),
            references=references.get(qid, ()),
        ))  # fmt: skip
    return EvalSet("mt_bench", items, (path, *reference_files))


def _mt_references(paths: Sequence[Path]) -> dict[Any, tuple[str, ...]]:
    found: dict[Any, tuple[str, ...]] = {}
    for path in paths:
        for row in _jsonl(path):
            choices = row.get("choices") or [{}]
            turns = choices[0].get("turns") if isinstance(choices[0], dict) else None
            if "question_id" in row and _strings(turns):
                found[row["question_id"]] = tuple(turns)
    return found


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _plain(path: Path, rows: list[dict[str, Any]]) -> EvalSet:
    items = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        try:
            item = plain_item(row)
        except ValueError as exc:
            raise EvalDataError(f"{path} line {number}: {exc}") from None
        if item.id in seen:
            raise EvalDataError(f"{path} line {number}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise EvalDataError(f"{path}: no items")
    return EvalSet(path.stem, items, (path,))


_OWN_KEYS = {"custom_id", "id", "prompt", "turns", "messages", "answer", "kind", "reference",
             "references", "baseline", "category"}  # fmt: skip


def plain_item(row: dict[str, Any]) -> EvalItem:
    """One row of our JSONL format; raises ValueError with a message for the user."""
    ident = row.get("custom_id", row.get("id"))
    if not isinstance(ident, str | int) or not str(ident).strip():
        raise ValueError("'custom_id' (or 'id') is required")
    history, turns = _turns(row)
    answer = row.get("answer")
    kind = row.get("kind") or (_guess_kind(str(answer)) if answer is not None else None)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
    return EvalItem(
        id=str(ident), turns=turns, history=history,
        answer=str(answer) if answer is not None else None, kind=kind,
        references=_per_turn(row.get("references", row.get("reference")), "reference"),
        baseline=_per_turn(row.get("baseline"), "baseline"),
        category=str(row.get("category", "")),
        metadata={k: v for k, v in row.items() if k not in _OWN_KEYS},
    )  # fmt: skip


def _turns(row: dict[str, Any]) -> tuple[tuple[Message, ...], tuple[str, ...]]:
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return (), (row["prompt"],)
    if _strings(row.get("turns")):
        return (), tuple(row["turns"])
    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(_is_message(m) for m in messages):
        if messages[-1]["role"] != "user":
            raise ValueError("the last message must have role 'user'")
        history = tuple(Message(role=m["role"], content=m["content"]) for m in messages[:-1])
        return history, (messages[-1]["content"],)
    raise ValueError("give 'prompt' (a string), 'turns' (strings) or 'messages' (chat messages)")


def _is_message(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("role") in ("system", "user", "assistant")
        and isinstance(value.get("content"), str)
    )


def _per_turn(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if _strings(value):
        return tuple(value)
    raise ValueError(f"'{what}' must be a string or a list of strings (one per turn)")


def _guess_kind(answer: str) -> str:
    stripped = answer.strip()
    if len(stripped) == 1 and stripped.isalpha():
        return "choice"
    try:
        float(stripped.replace(",", ""))
    except ValueError:
        return "text"
    return "number"


def read_baseline_answers(path: Path) -> dict[str, tuple[str, ...]]:
    """A baseline's answers by item id: `moa run` results (``custom_id``, ``output``), or
    JSONL rows with ``custom_id``/``id`` and ``output`` (a string or one string a turn)."""
    answers: dict[str, tuple[str, ...]] = {}
    for number, row in enumerate(_jsonl(path), start=1):
        ident = row.get("custom_id", row.get("id"))
        output = row.get("output")
        if ident is None or not (isinstance(output, str) or _strings(output)):
            raise EvalDataError(f"{path} line {number}: needs 'custom_id' and 'output'")
        answers[str(ident)] = (output,) if isinstance(output, str) else tuple(output)
    return answers
