"""Which calls an item makes per layer, and each layer's quorum."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.plan import Plan, Verdict, layer_verdict
from pipeline.specs import AgentSpec, parse_preset


def _plan(**raw: Any) -> Plan:
    return Plan(parse_preset("p", {"aggregator": "agg", **raw}))


TWO_LAYERS = {
    "aggregator_instruction": "Final merge.",
    "layers": [
        {"agents": ["a", {"model": "b", "samples": 2}], "min_ok": 2},
        {"agents": ["c"], "instruction": "Refine."},
    ],
}


def test_single_preset_is_one_aggregator_call_in_layer_one() -> None:
    plan = _plan()
    assert (plan.proposer_layers, plan.aggregator_layer, plan.calls_per_item) == (0, 1, 1)
    (call,) = plan.layer_calls(1)
    assert (call.layer, call.slot, call.role, call.agent) == (1, 0, "aggregator", AgentSpec("agg"))


def test_aggregator_comes_after_the_proposer_layers() -> None:
    plan = _plan(**TWO_LAYERS)
    assert (plan.proposer_layers, plan.aggregator_layer, plan.calls_per_item) == (2, 3, 5)
    assert plan.aggregator_call() == plan.call(3, 0)
    assert plan.aggregator_call().instruction == "Final merge."


def test_proposer_calls_carry_slot_agent_and_their_layers_instruction() -> None:
    plan = _plan(**TWO_LAYERS)
    first = plan.layer_calls(1)
    assert [(c.layer, c.slot, c.role, c.agent.model) for c in first] == [
        (1, 0, "proposer", "a"),
        (1, 1, "proposer", "b"),
        (1, 2, "proposer", "b"),
    ]
    assert {c.instruction for c in first} == {None}
    assert plan.call(2, 0).instruction == "Refine."
    assert (plan.min_ok(1), plan.min_ok(2)) == (2, 1)


@pytest.mark.parametrize(("layer", "slot"), [(0, 0), (4, 0), (1, 3), (3, 1), (2, -1)])
def test_calls_outside_the_plan_are_rejected(layer: int, slot: int) -> None:
    with pytest.raises(ValueError):
        _plan(**TWO_LAYERS).call(layer, slot)


S, F = "succeeded", "failed"


@pytest.mark.parametrize(
    ("statuses", "min_ok", "expected"),
    [
        ({0: S, 1: S}, 1, Verdict("wait", 2, 0)),
        ({0: S, 1: S, 2: "running"}, 1, Verdict("wait", 2, 0)),
        ({0: F, 1: F, 2: "retrying"}, 2, Verdict("wait", 0, 2)),
        ({0: S, 1: S, 2: S}, 3, Verdict("proceed", 3, 0)),
        ({0: S, 1: F, 2: S}, 2, Verdict("proceed", 2, 1)),
        (
            {0: S, 1: F, 2: F},
            2,
            Verdict("fail", 1, 2, "layer 4: 1 of 3 proposals succeeded, 2 required"),
        ),
        (
            {0: F, 1: F, 2: F},
            1,
            Verdict("fail", 0, 3, "layer 4: 0 of 3 proposals succeeded, 1 required"),
        ),
    ],
    ids=[
        "missing-slot",
        "running",
        "retrying",
        "all-ok",
        "quorum-met",
        "quorum-missed",
        "all-failed",
    ],
)
def test_layer_verdict(statuses: dict[int, str], min_ok: int, expected: Verdict) -> None:
    assert layer_verdict(statuses, 3, min_ok, 4) == expected


@pytest.mark.parametrize(
    ("statuses", "degraded"),
    [({0: S, 1: S}, False), ({0: S, 1: F}, True), ({0: F, 1: F}, False)],
)
def test_degraded_means_proceeding_without_every_proposal(
    statuses: dict[int, str], degraded: bool
) -> None:
    assert layer_verdict(statuses, 2, 1, 1).degraded is degraded
