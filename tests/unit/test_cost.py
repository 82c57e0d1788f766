"""The cost of a call from token usage and per-1M prices, in Decimal."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.cost import call_cost


@pytest.mark.parametrize(
    ("prompt", "completion", "input_price", "output_price", "expected"),
    [
        (1_000_000, 0, "2.50", "10.00", "2.5"),
        (0, 1_000_000, "2.50", "10.00", "10"),
        (1_000, 500, "0.15", "0.60", "0.00045"),
        (3, 0, "0.10", "0", "0.0000003"),
        (123_456, 7_890, "0", "0", "0"),
        (1, 0, "0.004", "0", "0"),  # 4e-9 is below the 8-decimal quantum
        (1, 0, "0.006", "0", "0.00000001"),
    ],
)
def test_call_cost(
    prompt: int, completion: int, input_price: str, output_price: str, expected: str
) -> None:
    cost = call_cost(prompt, completion, Decimal(input_price), Decimal(output_price))
    assert cost == Decimal(expected)


def test_cost_is_a_decimal_with_eight_places() -> None:
    cost = call_cost(1_000, 500, Decimal("0.15"), Decimal("0.60"))
    assert isinstance(cost, Decimal)
    assert str(cost) == "0.00045000"
