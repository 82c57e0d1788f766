"""``moa run --estimate``: upper-bound tokens and cost of a job from its plan and prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pipeline.estimate import EstimateLine, estimate_job, total
from pipeline.plan import Plan
from pipeline.prompts import AGGREGATE_INSTRUCTION, aggregate_system_text
from pipeline.specs import Config, parse_config
from pipeline.tokens import PER_MESSAGE, count_tokens

MODELS = {
    "small": {"provider": "api", "model": "gpt-4o-mini", "input_per_1m": "0.15",
              "output_per_1m": "0.60"},
    "big": {"provider": "api", "model": "gpt-4o", "input_per_1m": "2.50",
            "output_per_1m": "10.00"},
    "base": {"provider": "local", "model": "gemma-3-270m"},
}  # fmt: skip
PROVIDERS = {
    "api": {"base_url": "http://127.0.0.1:9/v1"},
    "local": {
        "base_url": "http://127.0.0.1:9/v1",
        "mode": "completion",
        "prefix": "Question: 1 + 1?\n\nAnswer: 2",
        "aggregate_instruction": "Merge these.",
    },
}


def _setup(preset: dict[str, Any]) -> tuple[Plan, Config]:
    config = parse_config({"providers": PROVIDERS, "models": MODELS, "presets": {"p": preset}})
    return Plan(config.preset("p")), config


def _frame(answers: int, model: str = "gpt-4o", instruction: str = AGGREGATE_INSTRUCTION) -> int:
    """Tokens of the system message around ``answers`` shown outputs, without them."""
    text = aggregate_system_text(instruction, [""] * answers)
    return count_tokens(text, model) + PER_MESSAGE


def _brief(lines: list[EstimateLine]) -> list[tuple[int, str, str, int, int, int]]:
    return [
        (x.layer, x.role, x.model, x.calls, x.prompt_tokens, x.completion_tokens) for x in lines
    ]


def test_single_preset_is_one_call_per_item_over_the_query_alone() -> None:
    plan, config = _setup({"aggregator": {"model": "big", "max_tokens": 300}})
    lines = estimate_job(plan, config, items=10, query_tokens=1234)
    assert _brief(lines) == [(1, "aggregator", "big", 10, 1234, 3000)]


def test_two_layers_show_layer_one_at_its_max_tokens_to_the_aggregator() -> None:
    plan, config = _setup(
        {
            "aggregator": {"model": "big", "max_tokens": 400},
            "layers": [
                {
                    "agents": [
                        {"model": "small", "max_tokens": 100, "samples": 2},
                        {"model": "big", "max_tokens": 200},
                    ]
                }
            ],
        }
    )
    lines = estimate_job(plan, config, items=3, query_tokens=90)
    layer2 = 90 + 3 * (_frame(3) + 100 + 100 + 200)
    assert _brief(lines) == [
        (1, "proposer", "big", 3, 90, 600),
        (1, "proposer", "small", 6, 2 * 90, 600),
        (2, "aggregator", "big", 3, layer2, 1200),
    ]


def test_a_layers_own_instruction_replaces_the_default() -> None:
    preset = {
        "aggregator": "big",
        "aggregator_instruction": "Pick one.",
        "layers": [{"agents": ["small"]}],
    }
    plan, config = _setup(preset)
    (_, final) = estimate_job(plan, config, items=1, query_tokens=5)
    assert final.prompt_tokens == 5 + _frame(1, instruction="Pick one.") + 512


def test_windowed_aggregation_also_sees_the_carried_synthesis() -> None:
    # Five samples aggregated two at a time: windows (0, 1), (2, 3), (4,).
    plan, config = _setup(
        {
            "aggregator": {"model": "big", "max_tokens": 300},
            "layers": [{"agents": [{"model": "small", "max_tokens": 100, "samples": 5}]}],
            "window": 2,
        }
    )
    lines = estimate_job(plan, config, items=2, query_tokens=40)
    assert _brief(lines) == [
        (1, "proposer", "small", 10, 5 * 40, 1000),
        (2, "aggregator", "big", 2, 40 + 2 * (_frame(2) + 2 * 100), 600),
        (3, "aggregator", "big", 2, 40 + 2 * (_frame(3) + 300 + 2 * 100), 600),
        (4, "aggregator", "big", 2, 40 + 2 * (_frame(2) + 300 + 100), 600),
    ]


def test_cost_uses_the_models_decimal_prices() -> None:
    plan, config = _setup(
        {
            "aggregator": {"model": "big", "max_tokens": 1000},
            "layers": [{"agents": [{"model": "small", "max_tokens": 500, "samples": 2}]}],
        }
    )
    lines = estimate_job(plan, config, items=4, query_tokens=2000)
    proposers, final = lines
    # 4000 prompt tokens at 0.15 and 4000 completion tokens at 0.60 per million.
    assert (proposers.prompt_tokens, proposers.completion_tokens) == (4000, 4000)
    assert proposers.cost == Decimal("0.003")
    expected = (Decimal(final.prompt_tokens) * Decimal("2.50") + 4000 * Decimal(10)) / 10**6
    assert final.cost == expected
    assert total(lines) == (4000 + final.prompt_tokens, 8000, proposers.cost + final.cost)


def test_a_free_local_model_costs_nothing_but_its_prompts_carry_its_prefix() -> None:
    plan, config = _setup({"aggregator": "base", "layers": [{"agents": ["base", "base"]}]})
    proposers, final = estimate_job(plan, config, items=1, query_tokens=10)
    prefix = count_tokens(PROVIDERS["local"]["prefix"], "gemma-3-270m")
    assert proposers.prompt_tokens == 2 * (10 + prefix)
    # The provider's own aggregate instruction is the one its model is sent.
    assert final.prompt_tokens == 10 + _frame(2, "gemma-3-270m", "Merge these.") + 2 * 512
    assert total([proposers, final])[2] == Decimal(0)


def test_total_of_nothing_is_zero() -> None:
    assert total([]) == (0, 0, Decimal(0))
