"""Statistics of an evaluation: win rate with a bootstrap interval, and the length-controlled
win rate of AlpacaEval 2.0.

Win rate. Each item is judged twice with the answers swapped; the item's preference for the
candidate is the mean of the two (1 win, 0.5 tie, 0 loss), so a judge that always picks the
first answer gives 0.5 on every item. The win rate is the mean preference over items; its
95% interval is a percentile bootstrap over items with a seeded generator (Efron 1979).

Length control (Dubois et al. 2024, "Length-Controlled AlpacaEval", arXiv:2404.04475). Judges
prefer longer answers. AlpacaEval 2.0 fits a logistic regression (a GLM) of the preference on
model terms, the instruction's difficulty and ``tanh(length difference / its std)``, and
reports the win rate the fit predicts when the length difference is zero. Ours is the small
version of that GLM for one candidate against one baseline:

    P(candidate preferred) = sigmoid(b0 + b1 * tanh((len_c - len_b) / std(len_c - len_b)))

fitted to the item preferences (fractional targets: ties and split verdicts are 0.5) by
Newton's method with a light ridge penalty, which keeps the fit finite when one side always
wins; the LC win rate is sigmoid(b0). Without instruction-difficulty terms (they need many
models judged on the same items) it controls for length, not for difficulty.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pair_preference(first: float | None, second: float | None) -> float | None:
    """The item's preference from its two orders; None unless both verdicts are valid
    (one order alone would bring the position bias back)."""
    if first is None or second is None:
        return None
    return (first + second) / 2


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(
    values: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> Interval | None:
    """Percentile bootstrap interval of the mean of ``values``."""
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return Interval(_quantile(means, tail), _quantile(means, 1 - tail))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


@dataclass(frozen=True)
class LengthFit:
    intercept: float  # b0: the log-odds of a win at equal length
    slope: float  # b1: how much the judge rewards length
    win_rate: float  # sigmoid(b0), the length-controlled win rate


def length_controlled(
    preferences: Sequence[float], length_diffs: Sequence[float], *, ridge: float = 1e-3
) -> LengthFit | None:
    """Fit the preference on the tanh-scaled length difference; see the module docstring."""
    if not preferences:
        return None
    if len(preferences) != len(length_diffs):
        raise ValueError("one length difference per preference is needed")
    spread = _std(length_diffs)
    xs = [math.tanh(d / spread) if spread > 0 else 0.0 for d in length_diffs]
    b0, b1 = _newton(preferences, xs, ridge * len(preferences))
    return LengthFit(b0, b1, _sigmoid(b0))


def _std(values: Sequence[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _newton(ys: Sequence[float], xs: Sequence[float], ridge: float) -> tuple[float, float]:
    """Maximize the penalized Bernoulli log-likelihood of (b0, b1): a 2x2 Newton step a round."""
    b0 = b1 = 0.0
    for _ in range(100):
        g0, g1 = -ridge * b0, -ridge * b1
        h00, h01, h11 = ridge, 0.0, ridge
        for y, x in zip(ys, xs, strict=True):
            p = _sigmoid(b0 + b1 * x)
            w = p * (1 - p)
            g0, g1 = g0 + (y - p), g1 + (y - p) * x
            h00, h01, h11 = h00 + w, h01 + w * x, h11 + w * x * x
        det = h00 * h11 - h01 * h01
        step0, step1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + step0, b1 + step1
        if abs(step0) + abs(step1) < 1e-10:
            break
    return b0, b1
