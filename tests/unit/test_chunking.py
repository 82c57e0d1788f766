"""Token-aware chunking: every part fits every call of the preset, and no word is lost."""

from __future__ import annotations

import random

import pytest

from pipeline.chunking import call_room, map_messages, part_room, reduce_fits, split_text
from pipeline.specs import parse_config
from pipeline.tokens import count_tokens, prompt_tokens


def _essay(words: int, seed: int = 3) -> str:
    rng = random.Random(seed)
    vocabulary = ["contract", "penalty", "delivery", "the", "of", "supplier", "2026", "clause"]
    paragraphs = []
    while words > 0:
        n = min(words, rng.randint(5, 120))
        sentence = " ".join(rng.choice(vocabulary) for _ in range(n))
        paragraphs.append(sentence.replace("the ", "the. ", 1))
        words -= n
    return "\n\n".join(paragraphs)


@pytest.mark.parametrize("limit", [7, 50, 300])
def test_every_part_fits_and_nothing_is_lost(limit: int) -> None:
    text = _essay(3000)
    parts = split_text(text, limit)
    assert len(parts) > 1
    assert all(count_tokens(p) <= limit for p in parts)
    assert " ".join(parts).split() == text.split()


def test_a_single_giant_word_is_cut_by_characters() -> None:
    word = "x" * 5000
    parts = split_text(word, 40)
    assert all(count_tokens(p) <= 40 for p in parts)
    assert "".join(parts) == word


def test_text_that_fits_is_one_part_and_empty_text_none() -> None:
    assert split_text("short text", 100) == ["short text"]
    assert split_text("  \n ", 100) == []
    with pytest.raises(ValueError, match="no room"):
        split_text("anything", 0)


CONFIG = {
    "providers": {"p": {"base_url": "http://x/v1"}},
    "models": {
        "small": {"provider": "p", "model": "gpt-4o-mini", "context_window": 2000},
        "big": {"provider": "p", "model": "gpt-4o", "context_window": 100000},
    },
    "presets": {
        "mixed": {
            "aggregator": {"model": "big", "max_tokens": 300},
            "layers": [
                {"agents": [{"model": "big", "max_tokens": 200, "samples": 3}]},
                {"agents": [{"model": "small", "max_tokens": 100}, "big"]},
            ],
        },
        "one": {"aggregator": {"model": "small", "max_tokens": 500}},
    },
}


def test_room_is_set_by_the_tightest_call() -> None:
    config = parse_config(CONFIG)
    room, model = call_room(config, config.preset("mixed"))
    # The small model in layer 2 sees three layer-1 answers of up to 200 tokens each.
    assert model == "gpt-4o-mini"
    assert room < 2000 - 100 - 3 * 200
    assert room > 2000 - 100 - 3 * 200 - 200
    single, _ = call_room(config, config.preset("one"))
    assert single == 2000 - 500 - 32


def test_a_part_plus_its_prompt_fits_the_room() -> None:
    config = parse_config(CONFIG)
    room, model = call_room(config, config.preset("one"))
    limit = part_room(room, "List the risks as a table", "contracts/a.pdf", model)
    parts = split_text(_essay(4000), limit, model)
    for number, part in enumerate(parts, start=1):
        messages = map_messages(
            "List the risks as a table", "contracts/a.pdf", part, number, len(parts)
        )
        assert prompt_tokens(messages, model) <= room


def test_reduce_fits_counts_every_part_at_its_longest_answer() -> None:
    assert reduce_fits(10_000, "Summarize", "a.txt", "", answer_tokens=500, parts=10)
    assert not reduce_fits(10_000, "Summarize", "a.txt", "", answer_tokens=500, parts=20)
