"""The messages each MoA layer sends, and the transcript base models get."""

from __future__ import annotations

import pytest

from pipeline.prompts import (
    AGGREGATE_INSTRUCTION,
    Message,
    aggregate_system_text,
    completion_prompt,
    layer_messages,
    query_messages,
)

QUESTION: list[Message] = [{"role": "user", "content": "What is 2+2?"}]


def test_aggregate_system_text_numbers_stripped_answers() -> None:
    text = aggregate_system_text("Combine.", ["  four \n", "4"])
    assert text == "Combine.\n\nAnswers:\n\n[1] four\n\n[2] 4"


def test_first_layer_sends_the_query_alone_as_a_copy() -> None:
    messages = layer_messages(QUESTION, [])
    assert messages == QUESTION
    messages[0]["content"] = "changed"
    assert QUESTION[0]["content"] == "What is 2+2?"


def test_later_layers_put_previous_answers_in_a_system_message() -> None:
    messages = layer_messages(QUESTION, ["four", "5"])
    assert messages == [
        {"role": "system", "content": aggregate_system_text(AGGREGATE_INSTRUCTION, ["four", "5"])},
        *QUESTION,
    ]


def test_a_preset_instruction_replaces_the_default() -> None:
    (system, _) = layer_messages(QUESTION, ["four"], instruction="Pick the best.")
    assert system["content"].startswith("Pick the best.\n\nAnswers:")
    assert AGGREGATE_INSTRUCTION not in system["content"]


def test_the_users_system_prompt_comes_first_in_one_system_message() -> None:
    query: list[Message] = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "2+2?"},
    ]
    messages = layer_messages(query, ["quatre"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Answer in French.\n\n" + AGGREGATE_INSTRUCTION)
    assert messages[1:] == query[1:]


def test_query_messages_from_a_prompt() -> None:
    assert query_messages("Hi", None) == [{"role": "user", "content": "Hi"}]


def test_query_messages_keep_only_role_and_content() -> None:
    given = [{"role": "user", "content": "Hi", "name": "bob"}]
    assert query_messages(None, given) == [{"role": "user", "content": "Hi"}]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("messages", "prefix", "expected"),
    [
        (QUESTION, "", "Question: What is 2+2?\n\nAnswer:"),
        (
            QUESTION,
            "\nQuestion: 1+1?\n\nAnswer: 2\n",
            "Question: 1+1?\n\nAnswer: 2\n\nQuestion: What is 2+2?\n\nAnswer:",
        ),
        (
            [{"role": "system", "content": " Be brief. "}, *QUESTION],
            "Question: 1+1?\n\nAnswer: 2",
            "Be brief.\n\nQuestion: What is 2+2?\n\nAnswer:",
        ),
        (
            [
                {"role": "user", "content": "Hi "},
                {"role": "assistant", "content": " Hello"},
                {"role": "user", "content": "2+2?"},
            ],
            "",
            "Question: Hi\n\nAnswer: Hello\n\nQuestion: 2+2?\n\nAnswer:",
        ),
    ],
    ids=["bare", "prefix-first", "system-replaces-prefix", "multi-turn"],
)
def test_completion_prompt(messages: list[Message], prefix: str, expected: str) -> None:
    assert completion_prompt(messages, prefix) == expected


def test_an_aggregator_in_completion_mode_sees_the_whole_conversation() -> None:
    # A second turn (moa eval, MT-Bench): the aggregator must see the earlier turn and its
    # answer, not only the last question, and a base model gets them as a transcript.
    conversation: list[Message] = [
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Double it."},
    ]

    prompt = completion_prompt(layer_messages(conversation, ["14", "15"]), prefix="ignored")

    answers_at = prompt.index("[1] 14\n\n[2] 15")
    history_at = prompt.index("Question: What is 3 + 4?\n\nAnswer: 7\n\nQuestion: Double it.")
    assert answers_at < history_at and prompt.endswith("Double it.\n\nAnswer:")
    assert "ignored" not in prompt  # the aggregate instruction takes the few-shot prefix's place
