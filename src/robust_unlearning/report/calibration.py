"""Choosing one method's setting from a sweep by a criterion fixed before the sweep's results were seen.

The sweep's tables (``tables/intervals.csv`` and ``tables/paired.csv`` of :mod:`robust_unlearning.report.paired`)
hold, per configuration, the seed mean of every metric and the paired differences between configurations.
:func:`choose_setting` applies the rule of ``workflow/presets/synthetic_sweep.yaml`` (docs/findings.md,
"Calibrating ρ and γ"):

1. **Utility gate.** A setting of the method is eligible when its clean ``utility_metric`` (seed mean) is at most
   ``utility_tolerance`` below the reference method's (NPO+GDR). Settings above the reference pass.
2. **Robustness.** Among the eligible ones, the one with the lowest seed mean of ``robust_metric`` under
   ``attack`` / ``attack_params`` (forget MCQ after relearning) is the candidate.
3. **Burden of proof on a change.** The candidate replaces the paper-closest setting only when the paired
   difference candidate − paper-closest on that number has a 95 % interval entirely below 0. Otherwise the
   paper-closest setting is kept (when it is eligible; when it is not, the candidate stands and the reason
   says so).

Run from the command line: ``python workflow/scripts/select_calibration.py <tables dir> sam_npo:rho=0.01 …``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from robust_unlearning.config.grid import selects
from robust_unlearning.report.common import readable_label


@dataclass(frozen=True)
class Criterion:
    reference_method: str = "npo"
    utility_metric: str = "retain_mcq_acc"
    utility_tolerance: float = 0.03
    robust_metric: str = "forget_mcq_acc"
    attack: str = "relearn"
    attack_params: str = "fraction~0.5_steps~20"

    def __post_init__(self):
        if not (self.utility_tolerance >= 0):
            raise ValueError(f"Criterion.utility_tolerance must be >= 0, got {self.utility_tolerance!r}")


@dataclass
class Choice:
    method: str
    chosen: str                       # params string of the chosen setting
    paper_closest: str
    candidate: str | None             # lowest robust number among the eligible settings
    reason: str
    table: pd.DataFrame = field(repr=False)   # one row per setting: params, label, utility, robust, eligible
    reference_utility: float = math.nan
    paired: dict | None = None        # the candidate − paper-closest row of paired.csv, when there is one


def _mean(intervals: pd.DataFrame, method: str, params: str | None, metric: str, attack: str,
          attack_params: str) -> float:
    sel = (intervals["method"] == method) & (intervals["metric"] == metric) & (intervals["attack"] == attack) \
        & (intervals["attack_params"].astype(str) == attack_params)
    if params is not None:
        sel &= intervals["params"] == params
    rows = intervals[sel]
    if len(rows) > 1:
        raise ValueError(f"{method} has {len(rows)} settings with {metric} under {attack}: name one (params)")
    return float(rows["mean"].iat[0]) if len(rows) else math.nan


def choose_setting(intervals: pd.DataFrame, paired: pd.DataFrame, method: str, paper_closest: dict[str, str],
                   criterion: Criterion = Criterion()) -> Choice:
    """Apply the criterion (module docstring) to ``method``'s settings; ``paper_closest`` names the setting kept
    unless a change is earned, by parameter values (e.g. ``{"rho": "0.01", "gamma_target": "1"}``)."""
    c = criterion
    settings = list(dict.fromkeys(intervals.loc[intervals["method"] == method, "params"]))
    if not settings:
        raise ValueError(f"no setting of method {method!r} in the intervals table")
    matches = [p for p in settings if selects(paper_closest, p)]
    if len(matches) != 1:
        raise ValueError(f"{method}: the paper-closest setting {paper_closest} matches {len(matches)} settings "
                         f"({matches or 'none'}) of {settings}")
    closest = matches[0]
    ref = _mean(intervals, c.reference_method, None, c.utility_metric, "none", "default")
    if math.isnan(ref):
        raise ValueError(f"no clean {c.utility_metric} for the reference method {c.reference_method!r}")
    rows = []
    for p in settings:
        util = _mean(intervals, method, p, c.utility_metric, "none", "default")
        robust = _mean(intervals, method, p, c.robust_metric, c.attack, c.attack_params)
        rows.append({"params": p, "label": readable_label(method, p), "utility": util, "robust": robust,
                     "eligible": bool(util >= ref - c.utility_tolerance - 1e-12 and not math.isnan(robust))})
    table = pd.DataFrame(rows)
    eligible = table[table["eligible"]]
    if eligible.empty:
        return Choice(method, closest, closest, None, f"no setting has {c.utility_metric} within "
                      f"{c.utility_tolerance} of {c.reference_method}'s {ref:.3f}: the paper-closest is kept",
                      table, ref)
    candidate = eligible.sort_values("robust", kind="mergesort")["params"].iat[0]
    if candidate == closest:
        return Choice(method, closest, closest, candidate, "the paper-closest setting is also the most robust "
                      "eligible one", table, ref)
    pair = _paired_row(paired, method, candidate, closest, c)
    closest_ok = bool(table.loc[table["params"] == closest, "eligible"].iat[0])
    if pair is not None and pair["ci_high"] < 0:
        return Choice(method, candidate, closest, candidate, f"{c.robust_metric} {pair['mean_diff']:+.3f} "
                      f"[{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}] against the paper-closest: the interval "
                      "excludes 0", table, ref, pair)
    if not closest_ok:
        return Choice(method, candidate, closest, candidate, f"the paper-closest setting fails the utility gate; "
                      "the most robust eligible one stands", table, ref, pair)
    why = ("no paired row" if pair is None else
           f"{pair['mean_diff']:+.3f} [{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}] includes 0")
    return Choice(method, closest, closest, candidate, f"the candidate's difference to the paper-closest, {why}: "
                  "the paper-closest is kept", table, ref, pair)


def _paired_row(paired: pd.DataFrame, method: str, a: str, b: str, c: Criterion) -> dict | None:
    """The paired row a − b on the robust number (paired.csv stores each pair once, in table order)."""
    base = (paired["metric"] == c.robust_metric) & (paired["attack"] == c.attack) \
        & (paired["attack_params"].astype(str) == c.attack_params) \
        & (paired["method_a"] == method) & (paired["method_b"] == method)
    for x, y, sign in ((a, b, 1.0), (b, a, -1.0)):
        rows = paired[base & (paired["params_a"] == x) & (paired["params_b"] == y)]
        if len(rows):
            r = rows.iloc[0]
            lo, hi = sign * float(r["ci_low"]), sign * float(r["ci_high"])
            return {"mean_diff": sign * float(r["mean_diff"]), "ci_low": min(lo, hi), "ci_high": max(lo, hi),
                    "p_value": float(r["p_value"]), "n_seeds": int(r["n_seeds"])}
    return None


def choice_markdown(choice: Choice, criterion: Criterion = Criterion()) -> str:
    """The setting table (utility, robustness, gate) and the decision, as markdown."""
    c = criterion
    lines = [f"**{choice.method}** (reference {c.reference_method} clean {c.utility_metric} "
             f"{choice.reference_utility:.3f}; gate ≥ {choice.reference_utility - c.utility_tolerance:.3f})", "",
             f"| setting | clean {c.utility_metric} | {c.robust_metric} after {c.attack} ({c.attack_params}) "
             "| passes the gate |", "|---|---:|---:|:---:|"]
    for r in choice.table.itertuples():
        mark = " (paper-closest)" if r.params == choice.paper_closest else ""
        mark += " **(chosen)**" if r.params == choice.chosen else ""
        lines.append(f"| `{r.params}`{mark} | {r.utility:.3f} | {r.robust:.3f} | {'yes' if r.eligible else 'no'} |")
    lines += ["", f"Chosen: `{choice.chosen}`: {choice.reason}."]
    return "\n".join(lines)


__all__ = ["Choice", "Criterion", "choice_markdown", "choose_setting"]
