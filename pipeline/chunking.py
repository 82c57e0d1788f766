"""Long documents: the map and reduce prompts, and token-aware chunks that fit every call.

A document too long for one call is cut into parts; each part goes through the
preset (map), then the parts' results go through the preset again under a reduce
instruction (reduce). A part must fit *every* call the preset makes on it: later
layers also carry the previous layer's answers, each up to its ``max_tokens``, so
the room for the part is the smallest model's window minus the answer, those
carried answers, the instructions, and a margin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.plan import CallPlan, Plan, Source
from pipeline.prompts import AGGREGATE_INSTRUCTION, Message
from pipeline.specs import Config, PresetSpec
from pipeline.tokens import PER_MESSAGE, count_tokens, prompt_tokens

MARGIN_TOKENS = 32  # chat templates and tokenizers differ a little from our count
PER_RESPONSE = 8  # "[n] " and the blank line around each carried answer

MAP_INSTRUCTION = (
    "You are reading a document to write part of a report about it. Carry out the "
    "instruction below using only what the document says. If the document holds "
    "nothing the instruction asks for, say so plainly rather than guessing."
)
PART_NOTE = (
    "This is part {part} of {parts} of a longer document. Work on this part only; the "
    "results of all parts are combined afterwards, so keep names, figures and dates exact."
)
REDUCE_INSTRUCTION = (
    "A long document was cut into {parts} consecutive parts and the instruction below "
    "was carried out on each part separately; the results follow in document order. "
    "Combine them into a single answer to the instruction for the whole document: merge "
    "repeated points, keep every distinct fact, figure and name, settle contradictions "
    "where the results allow it, and do not mention the parts or this process."
)


def map_messages(
    instruction: str, name: str, text: str, part: int = 1, parts: int = 1
) -> list[Message]:
    system = f"{MAP_INSTRUCTION}\n\nInstruction: {instruction}"
    where = f"Document {name}"
    if parts > 1:
        system += "\n\n" + PART_NOTE.format(part=part, parts=parts)
        where += f", part {part} of {parts}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"{where}:\n\n{text}"},
    ]


def reduce_messages(instruction: str, name: str, results: Sequence[str]) -> list[Message]:
    system = REDUCE_INSTRUCTION.format(parts=len(results)) + f"\n\nInstruction: {instruction}"
    body = "\n\n".join(f"Part {i}:\n{text.strip()}" for i, text in enumerate(results, start=1))
    user = f"Document {name}, results of its {len(results)} parts:\n\n{body}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def call_room(config: Config, preset: PresetSpec) -> tuple[int, str]:
    """Tokens left for the query in the tightest call of the preset, and that call's model
    (whose tokenizer counts the parts)."""
    plan = Plan(preset)
    layers = range(1, plan.aggregator_layer + 1)
    rooms = [_room(config, plan, call) for n in layers for call in plan.layer_calls(n)]
    return min(rooms)


def _room(config: Config, plan: Plan, call: CallPlan) -> tuple[int, str]:
    model = config.model(call.agent.model)
    provider = config.providers.get(model.provider)
    carried = sum(_carried(plan, source) for source in call.sources)
    if call.sources:
        instruction = call.instruction or (provider and provider.aggregate_instruction)
        carried += count_tokens(instruction or AGGREGATE_INSTRUCTION, model.model) + PER_MESSAGE
    room = model.context_window - call.agent.max_tokens - carried - MARGIN_TOKENS
    return room, model.model


def _carried(plan: Plan, source: Source) -> int:
    """The most tokens the answers of ``source`` can add to a prompt."""
    calls = plan.layer_calls(source.layer)
    if source.slots is not None:
        calls = [c for c in calls if c.slot in source.slots]
    return sum(c.agent.max_tokens + PER_RESPONSE for c in calls)


def part_room(room: int, instruction: str, name: str, model: str, parts: int = 2) -> int:
    """Tokens a part's text may take, once the map prompt's own words are counted."""
    return room - prompt_tokens(map_messages(instruction, name, "", parts, parts), model)


def reduce_fits(
    room: int, instruction: str, name: str, model: str, answer_tokens: int, parts: int
) -> bool:
    """Whether the results of ``parts`` parts, each up to ``answer_tokens``, fit one reduce call."""
    frame = prompt_tokens(reduce_messages(instruction, name, [""] * parts), model)
    return frame + parts * answer_tokens <= room


# --- splitting ------------------------------------------------------------------------------

_SEPARATORS = ("\n\n", "\n", ". ", " ")
_SENTENCE = re.compile(r"(?<=\. )")


def split_text(text: str, limit: int, model: str = "") -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` tokens, at the largest boundary that
    works (paragraph, line, sentence, word; characters as a last resort). Joining the
    pieces with whitespace loses no word."""
    if limit < 1:
        raise ValueError(f"no room for any text (limit {limit} tokens)")
    return [c for c in _split(text, limit, model, 0) if c.strip()]


def _split(text: str, limit: int, model: str, level: int) -> list[str]:
    if count_tokens(text, model) <= limit:
        return [text]
    if level >= len(_SEPARATORS):
        return _by_characters(text, limit, model)
    separator = _SEPARATORS[level]
    pieces = _SENTENCE.split(text) if separator == ". " else text.split(separator)
    joiner = "" if separator == ". " else separator
    # Pack pieces while the sum of their counts fits; a packed chunk is counted again
    # one level down, which splits it further in the rare case merging made it longer.
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    glue = count_tokens(joiner, model) if joiner else 0
    for piece in pieces:
        size = count_tokens(piece, model) + glue
        if current and used + size > limit:
            chunks.append(joiner.join(current))
            current, used = [], 0
        current.append(piece)
        used += size
    if current:
        chunks.append(joiner.join(current))
    return [part for chunk in chunks for part in _split(chunk, limit, model, level + 1)]


def _by_characters(text: str, limit: int, model: str) -> list[str]:
    out: list[str] = []
    rest = text
    while rest:
        size = min(len(rest), max(1, limit * 2))
        while size > 1 and count_tokens(rest[:size], model) > limit:
            size = size * 3 // 4
        out.append(rest[:size])
        rest = rest[size:]
    return out
