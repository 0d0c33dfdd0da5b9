"""Aggregation over seeds: mean ± 95 % interval per cell, and paired differences between configurations.

Generic: any results tree with several seeds gets both tables; nothing here knows which methods a study
compares. A *configuration* is ``(method, params)``; a *cell* is configuration × attack × attack setting ×
metric, where the attack setting is the attack parameters without their own ``seed`` (weight-noise draws are
pooled like model seeds, as in the other tables). Only ``ok`` rows with a finite value enter.

- ``intervals.csv``: per cell ``n_seeds, mean, std, ci_low, ci_high`` with the Student-t interval
  mean ± t_{0.975, n−1}·std/√n (NaN bounds for one seed: no interval can be computed from one value).
- ``paired.csv``: for every two configurations A, B (A after B in table order, so a row reads e.g.
  "PRISM − NPO") and every cell both have, the per-seed differences d_s = A_s − B_s over the seeds both have
  (a seed is the model seed: the same data order, forget subset and attack draws for A and B). Columns
  ``metric, attack, attack_params, method_a, params_a, method_b, params_b, n_seeds, mean_diff, ci_low,
  ci_high, p_value``: the t-interval of the mean difference and the two-sided p-value of an exact sign-flip
  permutation test (all 2^n sign assignments of the d_s; Monte Carlo with a fixed seed above 2^16). The
  smallest p-value an exact sign-flip test can give is 2/2^n: 0.0625 with 5 seeds, 0.03125 with 6, so a
  study that wants p < 0.05 needs at least 6 seeds. With one common seed the interval and p-value are NaN.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from robust_unlearning.report.common import NA, config_order, drop_param

PAIRED_COLUMNS = ["metric", "attack", "attack_params", "method_a", "params_a", "method_b", "params_b", "n_seeds",
                  "mean_diff", "ci_low", "ci_high", "p_value"]
INTERVAL_COLUMNS = ["method", "params", "attack", "attack_params", "metric", "n_seeds", "mean", "std", "ci_low",
                    "ci_high"]

# two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1..30 (standard tables)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
EXACT_MAX_N = 16          # 2^16 sign assignments at most; above: Monte Carlo
MC_DRAWS = 20000


def t975(df: int) -> float:
    """t_{0.975, df}; above 30 degrees of freedom interpolated towards the normal 1.960 (error < 0.002)."""
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    return 1.960 + (2.042 - 1.960) * 30.0 / df


def t_interval(values) -> tuple[float, float, float, float]:
    """(mean, std (ddof 1), ci_low, ci_high) of ``values``; std and bounds NaN for fewer than two values."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan, math.nan
    s = float(v.std(ddof=1))
    h = t975(v.size - 1) * s / math.sqrt(v.size)
    return m, s, m - h, m + h


def sign_flip_p(diffs, seed: int = 0) -> float:
    """Two-sided p-value of H0 "the paired differences are symmetric about 0": the share of sign assignments
    whose |mean| is at least the observed |mean| (the observed one included). NaN for fewer than two values."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n < 2:
        return math.nan
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(MC_DRAWS, n))
        signs[0] = 1.0
    stats = np.abs(signs @ d) / n
    return float(np.mean(stats >= obs - tol))


def _seeded(df: pd.DataFrame) -> pd.DataFrame:
    """The ok, finite rows of seeded models (unlearned runs), with the attack setting without its own seed."""
    if df.empty:
        return df.assign(setting=[])
    v = pd.to_numeric(df["value"], errors="coerce")
    keep = (df["status"].astype(str) == "ok") & np.isfinite(v) & ~df["seed"].astype(str).isin([NA, ""])
    if "checkpoint" in df:
        keep &= df["checkpoint"].astype(str).isin([NA, ""])
    out = df[keep].copy()
    out["value"] = v[keep].astype(float)
    out["setting"] = [drop_param(ap, "seed") for ap in out["attack_params"]]
    # weight-noise draws (attack seed) pooled per model seed first: one value per model seed and cell
    return out.groupby(["method", "params", "seed", "attack", "setting", "metric"], sort=False,
                       as_index=False)["value"].mean()


def seed_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: mean ± 95 % t-interval over seeds (columns :data:`INTERVAL_COLUMNS`)."""
    s = _seeded(df)
    rows = []
    for (m, p, a, st, met), grp in s.groupby(["method", "params", "attack", "setting", "metric"], sort=False):
        mean, std, lo, hi = t_interval(grp["value"].to_numpy())
        rows.append({"method": m, "params": p, "attack": a, "attack_params": st, "metric": met,
                     "n_seeds": int(grp["seed"].nunique()), "mean": mean, "std": std, "ci_low": lo, "ci_high": hi})
    out = pd.DataFrame.from_records(rows, columns=INTERVAL_COLUMNS)
    return _sorted(out, ["method", "params"])


def paired_differences(df: pd.DataFrame) -> pd.DataFrame:
    """Paired A − B differences over common seeds for every two configurations (columns :data:`PAIRED_COLUMNS`)."""
    s = _seeded(df)
    if s.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    order = config_order(s)
    rank = {c: i for i, c in enumerate(order)}
    wide = s.pivot_table(index=["attack", "setting", "metric", "seed"], columns=["method", "params"],
                         values="value", aggfunc="mean")
    rows = []
    for (attack, setting, metric), block in wide.groupby(level=[0, 1, 2], sort=False):
        block = block.dropna(axis=1, how="all")
        configs = sorted(block.columns, key=lambda c: rank[c])
        values = block[configs].to_numpy(dtype=float)               # seeds × configs (numpy: ~1000 pairs a block)
        present = ~np.isnan(values)
        for (i, b), (j, a) in itertools.combinations(enumerate(configs), 2):   # rank(a) > rank(b): "A − B"
            common = present[:, i] & present[:, j]
            if not common.any():
                continue
            d = values[common, j] - values[common, i]
            mean, _, lo, hi = t_interval(d)
            rows.append({"metric": metric, "attack": attack, "attack_params": setting, "method_a": a[0],
                         "params_a": a[1], "method_b": b[0], "params_b": b[1], "n_seeds": int(d.size),
                         "mean_diff": mean, "ci_low": lo, "ci_high": hi, "p_value": sign_flip_p(d)})
    out = pd.DataFrame.from_records(rows, columns=PAIRED_COLUMNS)
    return _sorted(out, ["method_a", "params_a", "method_b", "params_b"])


def _sorted(df: pd.DataFrame, config_cols: list[str]) -> pd.DataFrame:
    if df.empty:
        return df.reset_index(drop=True)
    cols = config_cols + ["attack", "attack_params", "metric"]
    return df.sort_values(cols, kind="mergesort").reset_index(drop=True)


def write_paired_tables(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """``tables/intervals.csv`` and ``tables/paired.csv`` (atomic; NaN = empty cell). Returns the paths."""
    from robust_unlearning.utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("intervals.csv", seed_intervals(df)), ("paired.csv", paired_differences(df))):
        path = out / name
        atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
        written.append(path)
    return written


__all__ = ["PAIRED_COLUMNS", "INTERVAL_COLUMNS", "paired_differences", "seed_intervals", "sign_flip_p",
           "t_interval", "write_paired_tables"]
