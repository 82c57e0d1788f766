"""Input JSONL: valid rows, and errors that name the line to fix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.inputs import InputError, InputRow, LineError, read_rows


def _line(**obj: Any) -> str:
    return json.dumps(obj)


GOOD = _line(custom_id="good", prompt="Hi")


def test_prompt_and_messages_rows_with_metadata() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    rows = list(
        read_rows(
            [
                _line(custom_id="a", prompt="Hi", lang="en", tags=["x"]),
                _line(custom_id="b", messages=messages).encode(),
            ]
        )
    )
    assert rows == [
        InputRow(1, "a", [{"role": "user", "content": "Hi"}], {"lang": "en", "tags": ["x"]}),
        InputRow(2, "b", messages, {}),
    ]


def test_blank_lines_are_skipped_but_counted() -> None:
    rows = list(read_rows(["", GOOD, "   \n", b"\n", _line(custom_id="z", prompt="Yo")]))
    assert [(row.line, row.custom_id) for row in rows] == [(2, "good"), (5, "z")]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"custom_id": "x", "prompt": ', "invalid JSON"),
        (b'{"custom_id": "x", "prompt": "caf\xe9"}', "not valid UTF-8"),
        ('["custom_id", "x"]', "expected a JSON object, got list"),
        (_line(prompt="Hi"), "'custom_id' is required"),
        (_line(custom_id="  ", prompt="Hi"), "'custom_id' is required"),
        (_line(custom_id=7, prompt="Hi"), "'custom_id' is required"),
        (_line(custom_id="x" * 201, prompt="Hi"), "longer than 200"),
        (_line(custom_id="x"), "give exactly one of"),
        (
            _line(custom_id="x", prompt="Hi", messages=[{"role": "user", "content": "Hi"}]),
            "give exactly one of",
        ),
        (_line(custom_id="x", prompt=""), "'prompt' must be a non-empty string"),
        (_line(custom_id="x", messages=[]), "'messages' must be a non-empty list"),
        (_line(custom_id="x", messages=["Hi"]), "messages[0] must be an object"),
        (
            _line(custom_id="x", messages=[{"role": "tool", "content": "Hi"}]),
            "messages[0].role must be one of system, user, assistant",
        ),
        (
            _line(custom_id="x", messages=[{"role": "user", "content": 5}]),
            "messages[0].content must be a string",
        ),
        (
            _line(
                custom_id="x",
                messages=[
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ],
            ),
            "the last message must have role 'user'",
        ),
    ],
)
def test_invalid_line_is_reported_with_its_line_number(bad: str | bytes, message: str) -> None:
    results = list(read_rows([GOOD, "", bad, _line(custom_id="after", prompt="Hi")]))
    assert [type(r) for r in results] == [InputRow, LineError, InputRow]
    error = results[1]
    assert isinstance(error, LineError)
    assert error.line == 3
    assert message in error.message
    assert str(error).startswith("line 3: ")


def test_duplicate_custom_id_is_an_error_on_the_later_line() -> None:
    results = list(read_rows([GOOD, _line(custom_id="other", prompt="Hi"), GOOD]))
    assert results[2] == LineError(3, "duplicate custom_id 'good'")


@pytest.mark.parametrize(("size", "ok"), [(10, True), (11, False)])
def test_prompt_size_limit_counts_all_message_content(size: int, ok: bool) -> None:
    messages = [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": "x" * (size - 4)},
    ]
    (result,) = read_rows([_line(custom_id="a", messages=messages)], max_prompt_chars=10)
    if ok:
        assert isinstance(result, InputRow)
    else:
        assert result == LineError(1, f"prompt has {size} characters, the limit is 10")


def test_more_than_max_items_stops_with_an_error() -> None:
    lines = [_line(custom_id=str(i), prompt="Hi") for i in range(5)]
    results = list(read_rows(["bad", *lines], max_items=2))
    assert [r.line for r in results] == [1, 2, 3, 4]
    assert results[-1] == LineError(4, "more than 2 items")


def test_input_error_lists_the_first_errors() -> None:
    errors = [LineError(n, "bad") for n in range(1, 26)]
    text = str(InputError(errors, shown=2))
    assert text == "25 invalid input line(s):\nline 1: bad\nline 2: bad\n... and 23 more"
