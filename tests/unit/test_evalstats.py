"""Win rate, its bootstrap interval and the length-controlled win rate, on data whose answer
is known."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.evalreport import Evidence, Pair, summarize
from pipeline.evalsets import EvalItem
from pipeline.evalstats import bootstrap_ci, length_controlled, pair_preference
from pipeline.judging import parse_pairwise, plan_judging, preference


def _always_first(_messages: object) -> str:
    return "[[A]] The first reply is better."


def test_a_judge_that_always_prefers_the_first_answer_gives_fifty_percent() -> None:
    items = [EvalItem(id=f"q{i}", turns=(f"question {i}",)) for i in range(20)]
    answers = {"moa": {item.id: [f"a long answer {i}" * (i + 1)] for i, item in enumerate(items)}}
    baseline = {item.id: ("short",) for item in items}

    tasks = [t for t in plan_judging(items, answers, baseline, None) if t.kind == "pairwise"]
    verdicts = {(t.item, t.position): parse_pairwise(_always_first(t.messages)) for t in tasks}
    pairs = [
        Pair(preference(verdicts[(i.id, "A")], "A"), preference(verdicts[(i.id, "B")], "B"), 10.0)
        for i in items
    ]
    report = summarize(Evidence("moa", ["m"], len(items), pairs=pairs))

    assert len(tasks) == 40  # every item judged in both orders
    assert report["win_rate"] == 50.0
    assert report["ci"] == [50.0, 50.0]
    assert report["lc_win_rate"] == 50.0
    assert report["pair_verdicts_invalid"] == 0


def test_an_item_with_one_invalid_order_is_left_out_and_counted() -> None:
    pairs = [Pair(1.0, 1.0, 0.0), Pair(1.0, None, 0.0), Pair(0.0, 0.0, 0.0)]

    report = summarize(Evidence("p", [], 3, pairs=pairs))

    assert pair_preference(1.0, None) is None  # one order alone would bring the bias back
    assert report["pairs_valid"] == 2 and report["pair_verdicts_invalid"] == 1
    assert report["win_rate"] == 50.0


def test_bootstrap_interval_matches_the_normal_approximation_of_a_proportion() -> None:
    values = [1.0] * 300 + [0.0] * 700  # p = 0.3, n = 1000
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 1000)

    interval = bootstrap_ci(values, seed=11, resamples=4000)

    assert interval is not None
    assert interval.low == pytest.approx(0.3 - half, abs=0.004)
    assert interval.high == pytest.approx(0.3 + half, abs=0.004)


def test_bootstrap_is_seeded_and_degenerate_data_has_no_width() -> None:
    values = [(i * 0.37) % 1 for i in range(40)]

    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    same = bootstrap_ci([1.0] * 50)
    assert same is not None and (same.low, same.high) == (1.0, 1.0)
    assert bootstrap_ci([]) is None


def _synthetic(intercept: float, slope: float, n: int = 3000) -> tuple[list[float], list[float]]:
    """Preferences drawn from the model itself, with the candidate usually the longer answer."""
    rng = random.Random(5)
    diffs = [rng.gauss(300, 300) for _ in range(n)]
    spread = math.sqrt(sum((d - sum(diffs) / n) ** 2 for d in diffs) / n)
    prefs = []
    for d in diffs:
        p = 1 / (1 + math.exp(-(intercept + slope * math.tanh(d / spread))))
        prefs.append(1.0 if rng.random() < p else 0.0)
    return prefs, diffs


@pytest.mark.parametrize("intercept", [0.0, 1.0])
def test_length_control_recovers_the_win_rate_at_equal_length(intercept: float) -> None:
    prefs, diffs = _synthetic(intercept, slope=2.0)

    fit = length_controlled(prefs, diffs)

    raw = sum(prefs) / len(prefs)
    expected = 1 / (1 + math.exp(-intercept))
    assert fit is not None
    assert raw > expected + 0.1  # the judge's taste for length inflates the raw win rate
    assert fit.win_rate == pytest.approx(expected, abs=0.04)
    assert fit.slope == pytest.approx(2.0, abs=0.3)


def test_length_control_stays_finite_when_one_side_always_wins() -> None:
    fit = length_controlled([1.0] * 30, [float(i) for i in range(30)])

    assert fit is not None and 0.9 < fit.win_rate < 1.0
    assert length_controlled([], []) is None
    with pytest.raises(ValueError):
        length_controlled([1.0], [])
