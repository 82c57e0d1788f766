"""Money: the cost of a call from its token usage and the model's prices (Decimal only)."""

from __future__ import annotations

from decimal import Decimal

PER_MILLION = Decimal(1_000_000)
# Eight decimals of a currency unit is below any provider's billing granularity.
QUANTUM = Decimal("0.00000001")


def call_cost(
    prompt_tokens: int, completion_tokens: int, input_per_1m: Decimal, output_per_1m: Decimal
) -> Decimal:
    """Cost of one call; prices are per million tokens, as providers publish them."""
    raw = Decimal(prompt_tokens) * input_per_1m + Decimal(completion_tokens) * output_per_1m
    return (raw / PER_MILLION).quantize(QUANTUM)
