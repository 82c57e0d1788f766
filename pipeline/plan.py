"""Layer planning: which calls an item makes, keyed by (layer, slot), and what each sees.

Layers 1..N are the preset's proposer layers, run in parallel (one chord each).
After them come single-call aggregation layers: normally one, the final
aggregator. With ``window = w`` (Self-MoA-Seq, Li et al. 2025, arXiv:2502.00674)
the last proposer layer's outputs are aggregated w at a time, each step also
seeing the synthesis carried from the step before; the last step is the answer.
A preset without proposer layers is one call.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.specs import AgentSpec, PresetSpec


@dataclass(frozen=True)
class Source:
    """Outputs a call is shown: a layer's successful calls, all of them or some slots."""

    layer: int
    slots: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CallPlan:
    layer: int
    slot: int
    role: str  # "proposer" | "aggregator"
    agent: AgentSpec
    instruction: str | None  # the instruction over the outputs it is shown
    sources: tuple[Source, ...] = ()  # in the order they are numbered in the prompt


@dataclass(frozen=True)
class Plan:
    preset: PresetSpec
    stream_final: bool = False  # publish the final answer's tokens as they arrive

    @property
    def proposer_layers(self) -> int:
        return len(self.preset.layers)

    @property
    def windows(self) -> list[tuple[int, ...]]:
        """Slots of the last proposer layer, chunked for sequential aggregation."""
        if not self.preset.layers:
            return [()]
        size = len(self.preset.layers[-1].agents)
        step = self.preset.window or size
        return [tuple(range(i, min(i + step, size))) for i in range(0, size, step)]

    @property
    def aggregator_layer(self) -> int:
        return self.proposer_layers + len(self.windows)

    @property
    def calls_per_item(self) -> int:
        return sum(len(layer.agents) for layer in self.preset.layers) + len(self.windows)

    def parallel(self, layer: int) -> bool:
        """Proposer layers run as chords; aggregation layers are one call each."""
        return 1 <= layer <= self.proposer_layers

    def layer_calls(self, layer: int) -> list[CallPlan]:
        if self.parallel(layer):
            spec = self.preset.layers[layer - 1]
            sources = (Source(layer - 1),) if layer > 1 else ()
            return [
                CallPlan(layer, slot, "proposer", agent, spec.instruction, sources)
                for slot, agent in enumerate(spec.agents)
            ]
        if self.proposer_layers < layer <= self.aggregator_layer:
            return [self._aggregation(layer)]
        raise ValueError(f"layer {layer} is not in 1..{self.aggregator_layer}")

    def _aggregation(self, layer: int) -> CallPlan:
        step = layer - self.proposer_layers  # 1-based window step
        sources: tuple[Source, ...] = ()
        if self.proposer_layers:
            window = Source(
                self.proposer_layers, self.windows[step - 1] if self.preset.window else None
            )
            carried = (Source(layer - 1),) if step > 1 else ()
            sources = (*carried, window)
        preset = self.preset
        return CallPlan(
            layer, 0, "aggregator", preset.aggregator, preset.aggregator_instruction, sources
        )

    def call(self, layer: int, slot: int) -> CallPlan:
        calls = self.layer_calls(layer)
        if not 0 <= slot < len(calls):
            raise ValueError(f"layer {layer} has no slot {slot}")
        return calls[slot]

    def aggregator_call(self) -> CallPlan:
        return self._aggregation(self.aggregator_layer)

    def min_ok(self, layer: int) -> int:
        return self.preset.layers[layer - 1].min_ok if self.parallel(layer) else 1

    def calls_after(self, layer: int) -> int:
        """Calls an item would still make after ``layer`` (what an early stop saves)."""
        later = range(layer + 1, self.aggregator_layer + 1)
        return sum(len(self.layer_calls(n)) for n in later)


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
