"""Messages for each MoA layer, and the plain-text rendering used for base models.

The aggregate-and-synthesize instruction follows the idea of Wang et al. 2024
(arXiv:2406.04692, Table 1): show the model the numbered responses of the
previous layer, warn that some may be wrong, ask for one refined answer. The
wording here is our own; a preset can replace it per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict


class Message(TypedDict):
    role: str
    content: str


AGGREGATE_INSTRUCTION = (
    "Several assistants have answered the user's latest request; their answers are "
    "numbered below. Read them critically: some may be wrong, biased or incomplete, "
    "and they may contradict each other. Do not copy any one of them. Write a single "
    "answer of your own that keeps what is correct and useful, fixes what is wrong, "
    "and is clear, accurate and well organised."
)


def aggregate_system_text(instruction: str, responses: Sequence[str]) -> str:
    numbered = "\n\n".join(f"[{i}] {text.strip()}" for i, text in enumerate(responses, start=1))
    return f"{instruction}\n\nAnswers:\n\n{numbered}"


def layer_messages(
    query: Sequence[Message], responses: Sequence[str], instruction: str | None = None
) -> list[Message]:
    """The messages an agent receives: the query alone in layer 1, with the
    previous layer's responses in the system message afterwards."""
    if not responses:
        return [dict(m) for m in query]  # type: ignore[misc]
    system = aggregate_system_text(instruction or AGGREGATE_INSTRUCTION, responses)
    rest = [dict(m) for m in query if m["role"] != "system"]
    own = [m["content"] for m in query if m["role"] == "system"]
    if own:  # keep the user's own system prompt, ours comes after it
        system = "\n\n".join([*own, system])
    return [{"role": "system", "content": system}, *rest]  # type: ignore[list-item]


def query_messages(prompt: str | None, messages: Sequence[Message] | None) -> list[Message]:
    if messages:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": prompt or ""}]


# Base models continue text; a chat template makes them ramble. They get a
# plain transcript that ends where the answer should start, and stop sequences
# that end it where the next turn would begin.
QUESTION = "Question:"
ANSWER = "Answer:"
COMPLETION_STOP = ("\nQuestion:", "\n\n", "\n[", "<end_of_turn>")


def completion_prompt(messages: Sequence[Message], prefix: str = "") -> str:
    """Render chat messages as a transcript ending in ``Answer:``.

    ``prefix`` (few-shot examples) goes first when there is no system message;
    a system message, the user's or MoA's aggregate instruction, takes its place.
    """
    has_system = any(m["role"] == "system" for m in messages)
    parts: list[str] = [prefix.strip()] if prefix.strip() and not has_system else []
    for message in messages:
        text = message["content"].strip()
        if message["role"] == "system":
            parts.append(text)
        elif message["role"] == "user":
            parts.append(f"{QUESTION} {text}")
        else:
            parts.append(f"{ANSWER} {text}")
    parts.append(ANSWER)
    return "\n\n".join(parts)
