"""``moa run --estimate``: an upper bound on a job's tokens and cost, worked out
from token counts and prices before a single call is made."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from pipeline.cost import call_cost
from pipeline.plan import CallPlan, Plan, Source
from pipeline.prompts import AGGREGATE_INSTRUCTION, aggregate_system_text
from pipeline.specs import AgentSpec, Config
from pipeline.tokens import PER_MESSAGE, count_tokens


@dataclass(frozen=True)
class EstimateLine:
    """The calls of one layer on one model, over every item of the job."""

    layer: int
    role: str
    model: str  # the config's alias (AgentSpec.model), not the provider's model id
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal


def estimate_job(plan: Plan, config: Config, items: int, query_tokens: int) -> list[EstimateLine]:
    """Tokens and cost per (layer, role, model), ordered by layer then model.

    An upper bound: every answer is assumed to use its agent's full ``max_tokens``,
    both as a completion and as text shown to the next layer, and no item stops
    early. ``query_tokens`` is the sum over the ``items`` of their query's prompt
    tokens (:func:`pipeline.tokens.prompt_tokens`).
    """
    groups: dict[tuple[int, str, str], list[CallPlan]] = {}
    for layer in range(1, plan.aggregator_layer + 1):
        for call in plan.layer_calls(layer):
            groups.setdefault((call.layer, call.role, call.agent.model), []).append(call)
    return [
        _line(plan, config, calls, items, query_tokens)
        for _, calls in sorted(groups.items(), key=lambda group: group[0])
    ]


def total(lines: Iterable[EstimateLine]) -> tuple[int, int, Decimal]:
    """Prompt tokens, completion tokens and cost of the whole job."""
    prompt, completion, cost = 0, 0, Decimal(0)
    for line in lines:
        prompt += line.prompt_tokens
        completion += line.completion_tokens
        cost += line.cost
    return prompt, completion, cost


def _line(
    plan: Plan, config: Config, calls: list[CallPlan], items: int, query_tokens: int
) -> EstimateLine:
    first = calls[0]
    model = config.model(first.agent.model)
    # Every call carries the whole query; query_tokens is already summed over items.
    prompt = len(calls) * query_tokens + items * sum(_added_tokens(plan, config, c) for c in calls)
    completion = items * sum(call.agent.max_tokens for call in calls)
    cost = call_cost(prompt, completion, model.input_per_1m, model.output_per_1m)
    return EstimateLine(
        layer=first.layer,
        role=first.role,
        model=first.agent.model,
        calls=items * len(calls),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
    )


def _added_tokens(plan: Plan, config: Config, call: CallPlan) -> int:
    """Prompt tokens one call adds to its item's query: what it is shown, and how."""
    model = config.model(call.agent.model)
    provider = config.providers[model.provider]
    shown = [agent.max_tokens for source in call.sources for agent in _producers(plan, source)]
    if not shown:
        # A base model's few-shot prefix goes before a bare question.
        uses_prefix = provider.mode == "completion" and provider.prefix.strip()
        return count_tokens(provider.prefix, model.model) if uses_prefix else 0
    # The same choice of instruction the worker makes when it builds the prompt.
    instruction = call.instruction or provider.aggregate_instruction or AGGREGATE_INSTRUCTION
    # Instruction, "Answers:" heading and numbering, with empty answers in place of
    # the real ones; each real one is counted at its producer's max_tokens instead.
    frame = count_tokens(aggregate_system_text(instruction, [""] * len(shown)), model.model)
    return frame + PER_MESSAGE + sum(shown)


def _producers(plan: Plan, source: Source) -> list[AgentSpec]:
    """The agents whose outputs a source stands for."""
    calls = plan.layer_calls(source.layer)
    if source.slots is None:
        return [call.agent for call in calls]
    return [calls[slot].agent for slot in source.slots]
