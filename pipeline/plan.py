"""Layer planning: which calls an item makes, keyed by (layer, slot).

Layers 1..N are the preset's proposer layers; layer N+1 is the single final
aggregator call (slot 0). A preset without proposer layers is one call.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.specs import AgentSpec, PresetSpec


@dataclass(frozen=True)
class CallPlan:
    layer: int
    slot: int
    role: str  # "proposer" | "aggregator"
    agent: AgentSpec
    instruction: str | None  # the instruction over the previous layer's outputs


@dataclass(frozen=True)
class Plan:
    preset: PresetSpec

    @property
    def proposer_layers(self) -> int:
        return len(self.preset.layers)

    @property
    def aggregator_layer(self) -> int:
        return self.proposer_layers + 1

    @property
    def calls_per_item(self) -> int:
        return sum(len(layer.agents) for layer in self.preset.layers) + 1

    def layer_calls(self, layer: int) -> list[CallPlan]:
        if layer == self.aggregator_layer:
            return [self.aggregator_call()]
        if not 1 <= layer <= self.proposer_layers:
            raise ValueError(f"layer {layer} is not in 1..{self.aggregator_layer}")
        # Agents of layer k>1 aggregate layer k-1: they get the instruction of layer k.
        spec = self.preset.layers[layer - 1]
        return [
            CallPlan(layer, slot, "proposer", agent, spec.instruction)
            for slot, agent in enumerate(spec.agents)
        ]

    def call(self, layer: int, slot: int) -> CallPlan:
        calls = self.layer_calls(layer)
        if not 0 <= slot < len(calls):
            raise ValueError(f"layer {layer} has no slot {slot}")
        return calls[slot]

    def aggregator_call(self) -> CallPlan:
        preset = self.preset
        return CallPlan(
            self.aggregator_layer, 0, "aggregator", preset.aggregator, preset.aggregator_instruction
        )

    def min_ok(self, layer: int) -> int:
        return self.preset.layers[layer - 1].min_ok


@dataclass(frozen=True)
class Verdict:
    """What a layer's callback does next: wait for stragglers, go on, or fail the item."""

    action: str  # "wait" | "proceed" | "fail"
    ok: int
    failed: int
    reason: str = ""

    @property
    def degraded(self) -> bool:
        return self.action == "proceed" and self.failed > 0


def layer_verdict(statuses: dict[int, str], slots: int, min_ok: int, layer: int) -> Verdict:
    """Apply a layer's quorum to the statuses of its calls, by slot.

    A chord's callback can fire before every call is final (a duplicated task
    counts twice in the chord counter), so anything not final means wait.
    """
    ok = sum(1 for s in statuses.values() if s == "succeeded")
    failed = sum(1 for s in statuses.values() if s == "failed")
    if ok + failed < slots:
        return Verdict("wait", ok, failed)
    if ok < min_ok:
        reason = f"layer {layer}: {ok} of {slots} proposals succeeded, {min_ok} required"
        return Verdict("fail", ok, failed, reason)
    return Verdict("proceed", ok, failed)
