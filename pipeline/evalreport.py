"""One preset's evidence (verdicts, ratings, exact matches, lengths, cost) summarized into
the figures of the report, and the report rendered as Markdown.

The report is plain JSON (it is stored with the run, and `moa eval show` renders it again):
every figure a preset gets is computed here, from evidence the orchestration collected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.evalstats import bootstrap_ci, length_controlled, mean, pair_preference


@dataclass(frozen=True)
class Pair:
    first: float | None  # the candidate's preference when shown first (as A); None: invalid
    second: float | None  # ... when shown second (as B)
    length_diff: float  # candidate's answer length minus the baseline's, in characters


@dataclass
class Evidence:
    preset: str
    models: list[str]
    items: int
    answered: int = 0  # items with an answer to every turn
    pairs: list[Pair] = field(default_factory=list)
    ratings: list[float | None] = field(default_factory=list)  # None: invalid verdict
    exact: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    cost: Decimal = Decimal(0)  # of the answers (every turn), not of judging them
    latencies_s: list[float] = field(default_factory=list)  # per item, all turns together
    is_baseline: bool = False


def summarize(evidence: Evidence, seed: int = 0) -> dict[str, Any]:
    valid = [(pair_preference(x.first, x.second), x.length_diff) for x in evidence.pairs]
    prefs = [p for p, _ in valid if p is not None]
    diffs = [d for p, d in valid if p is not None]
    interval = bootstrap_ci(prefs, seed=seed)
    fit = length_controlled(prefs, diffs)
    valid_ratings = [r for r in evidence.ratings if r is not None]
    invalid_pair_verdicts = sum((x.first is None) + (x.second is None) for x in evidence.pairs)
    return {
        "preset": evidence.preset, "models": evidence.models, "baseline": evidence.is_baseline,
        "items": evidence.items, "answered": evidence.answered,
        "win_rate": _pct(mean(prefs)),
        "ci": [_pct(interval.low), _pct(interval.high)] if interval else None,
        "lc_win_rate": _pct(fit.win_rate) if fit else None,
        "length_slope": round(fit.slope, 3) if fit else None,
        "pairs": len(evidence.pairs), "pairs_valid": len(prefs),
        "pair_verdicts_invalid": invalid_pair_verdicts,
        "mt_score": _round(mean(valid_ratings), 2),
        "ratings": len(evidence.ratings),
        "ratings_invalid": len(evidence.ratings) - len(valid_ratings),
        "exact_accuracy": _pct(mean([float(x) for x in evidence.exact])),
        "exact_items": len(evidence.exact),
        "mean_length": _round(mean([float(n) for n in evidence.lengths]), 0),
        "cost_per_item": f"{evidence.cost / evidence.items:.8f}" if evidence.items else None,
        "latency_per_item_s": _round(mean(evidence.latencies_s), 2),
    }  # fmt: skip


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --- Markdown ---------------------------------------------------------------------------------

COLUMNS = (
    "preset", "win rate % (95% CI)", "LC win rate %", "MT-Bench (1-10)", "exact match %",
    "mean length", "cost/item", "latency/item", "invalid verdicts",
)  # fmt: skip


def render_markdown(report: Mapping[str, Any]) -> str:
    data, judge = report["data"], report["judge"]
    lines = [
        f"# moa eval run {report['run_id']}",
        "",
        f"Data: `{data['path']}` ({data['name']}, {data['items']} items, "
        f"sha256 `{data['hash'][:16]}`). Judge: **{judge['model']}** (`{judge['provider_model']}`, "
        f"temperature {judge['temperature']}). Baseline for pairwise judging: "
        f"**{report['baseline']['name']}**.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines.extend(_row(row) for row in report["presets"])
    lines += ["", "Models that produced these numbers:", ""]
    for row in report["presets"]:
        lines.append(f"- `{row['preset']}`: {', '.join(row['models'])}")
    lines.append(f"- judge: {judge['model']} (`{judge['provider_model']}`)")
    lines += ["", "\n\n".join(_footnotes(report))]
    return "\n".join(lines) + "\n"


def _row(row: Mapping[str, Any]) -> str:
    win = "baseline" if row["baseline"] else _win(row)
    invalid = f"{row['pair_verdicts_invalid']} pairwise, {row['ratings_invalid']} ratings"
    cells = (
        f"`{row['preset']}`", win, _opt(row["lc_win_rate"]),
        _opt(row["mt_score"], of=row["ratings"] - row["ratings_invalid"]),
        _opt(row["exact_accuracy"], of=row["exact_items"]), _opt(row["mean_length"], fmt="{:.0f}"),
        f"${row['cost_per_item']}" if row["cost_per_item"] is not None else "-",
        _opt(row["latency_per_item_s"], fmt="{:.2f} s"), invalid,
    )  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _win(row: Mapping[str, Any]) -> str:
    if row["win_rate"] is None:
        return f"- (0 of {row['pairs']} pairs valid)" if row["pairs"] else "-"
    low, high = row["ci"]
    return f"{row['win_rate']:.1f} ({low:.1f}-{high:.1f}), n={row['pairs_valid']}"


def _opt(value: float | None, fmt: str = "{:.1f}", of: int | None = None) -> str:
    if value is None:
        return "-"
    text = fmt.format(value)
    return f"{text}, n={of}" if of is not None else text


def _footnotes(report: Mapping[str, Any]) -> list[str]:
    notes = [
        "Win rate: the judge compares each answer with the baseline's twice, in both orders; "
        "an item counts when both verdicts are valid (mean of the two: 1 win, 0.5 tie, 0 loss). "
        f"Interval: percentile bootstrap over items, {report['bootstrap']['resamples']} "
        f"resamples, seed {report['bootstrap']['seed']}.",
        "LC win rate: the win rate at equal length, from a logistic fit of the preference on "
        "tanh(length difference / its std) (AlpacaEval 2.0's length control, without "
        "instruction-difficulty terms).",
        "MT-Bench: mean 1-10 rating by the judge, per answered turn, with the reference answer "
        "where the data has one. Exact match: answers extracted from the text (numbers, "
        "choices, short facts), no judge. Mean length in characters; cost and latency per item "
        "cover every turn's answer, not the judging "
        f"(judging cost ${report['judge_cost']} in all).",
        "Invalid verdicts are judge replies with no readable verdict (or conflicting ones); "
        "they are counted here, never guessed.",
    ]
    return notes + [f"Note: {note}" for note in report.get("notes", [])]
