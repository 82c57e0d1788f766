"""Input JSONL: one object a line with ``custom_id`` and ``prompt`` or ``messages``.

Other keys are kept as metadata. Errors name the line number, so a user can
fix a 100k-line file without guessing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import MoaError
from pipeline.prompts import Message, query_messages

MAX_CUSTOM_ID = 200
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class InputRow:
    line: int
    custom_id: str
    messages: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        # Line 0 is about the input as a whole (it has no items, a bad option): no line to name.
        return f"line {self.line}: {self.message}" if self.line else self.message


class InputError(MoaError):
    def __init__(self, errors: list[LineError], shown: int = 20):
        self.errors = errors
        lines = [str(e) for e in errors[:shown]]
        if len(errors) > shown:
            lines.append(f"... and {len(errors) - shown} more")
        if not any(e.line for e in errors):
            super().__init__("invalid input: " + "; ".join(lines))
            return
        super().__init__(f"{len(errors)} invalid input line(s):\n" + "\n".join(lines))


def parse_line(line_no: int, raw: bytes | str, max_prompt_chars: int) -> InputRow:
    """Validate one line; raise ValueError with a message meant for the user."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    if line_no == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"invalid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "\\u" in text and (problem := _unstorable(obj)):  # only an escape can bring one in
        raise ValueError(f"the line has {problem}, which cannot be stored")
    custom_id = obj.pop("custom_id", None)
    if not isinstance(custom_id, str) or not custom_id.strip():
        raise ValueError("'custom_id' is required and must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise ValueError(f"'custom_id' is longer than {MAX_CUSTOM_ID} characters")
    messages = _messages(obj.pop("prompt", None), obj.pop("messages", None))
    size = sum(len(m["content"]) for m in messages)
    if size > max_prompt_chars:
        raise ValueError(f"prompt has {size} characters, the limit is {max_prompt_chars}")
    return InputRow(line=line_no, custom_id=custom_id, messages=messages, metadata=obj)


def _unstorable(obj: Any) -> str | None:
    """What in a parsed line PostgreSQL cannot store: a NUL character or an unpaired surrogate
    in any string or key. Iterative: lines can nest as deep as the JSON parser allows."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return "a NUL character (\\u0000)"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "an unpaired surrogate (\\ud800-\\udfff)"
    return None


def _messages(prompt: Any, messages: Any) -> list[Message]:
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a list)")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("'prompt' must be a non-empty string")
        return query_messages(prompt, None)
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        _check_message(index, message)
    if messages[-1]["role"] != "user":
        raise ValueError("the last message must have role 'user'")
    return query_messages(None, messages)


def _check_message(index: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{index}] must be an object")
    if message.get("role") not in ROLES:
        raise ValueError(f"messages[{index}].role must be one of {', '.join(ROLES)}")
    if not isinstance(message.get("content"), str):
        raise ValueError(f"messages[{index}].content must be a string")


def read_rows(
    lines: Iterable[bytes | str],
    *,
    max_prompt_chars: int = 100_000,
    max_items: int = 1_000_000,
    dedupe: bool = True,
) -> Iterator[InputRow | LineError]:
    """Parse lines one at a time (blank lines skipped); duplicates and limits are errors too.

    ``dedupe=False`` leaves duplicate custom_ids to the caller (the database's unique
    constraint), so memory does not grow with the number of lines.
    """
    seen: set[str] = set()
    count = 0
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = parse_line(line_no, raw, max_prompt_chars)
        except ValueError as exc:
            yield LineError(line_no, str(exc))
            continue
        if dedupe:
            if row.custom_id in seen:
                yield LineError(line_no, f"duplicate custom_id {row.custom_id!r}")
                continue
            seen.add(row.custom_id)
        count += 1
        if count > max_items:
            yield LineError(line_no, f"more than {max_items} items")
            return
        yield row
