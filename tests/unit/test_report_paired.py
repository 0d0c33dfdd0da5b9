"""report/paired.py on a hand-made tidy frame with known values."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from robust_unlearning.report.paired import (PAIRED_COLUMNS, paired_differences, seed_intervals, sign_flip_p,
                                             t_interval, write_paired_tables)


def _row(method, params, seed, metric, value, attack="none", aparams="default", status="ok"):
    mid = f"unlearn/{method}/{params}/seed~{seed}" if seed != "-" else f"models/{method}"
    return {"benchmark": "synthetic", "method": method, "params": params, "seed": str(seed), "model_id": mid,
            "attack": attack, "attack_params": aparams, "metric": metric, "value": value, "status": status,
            "n_items": math.nan, "judge": "", "checkpoint": "-", "note": ""}


@pytest.fixture()
def frame():
    npo = {0: 0.50, 1: 0.52, 2: 0.48, 3: 0.55, 4: 0.51, 5: 0.49}
    prism_minus_npo = {0: -0.05, 1: -0.03, 2: -0.04, 3: -0.06, 4: -0.02, 5: -0.04}
    rows = [_row("base", "-", "-", "forget_mcq_acc", 0.9)]
    for s in npo:
        rows.append(_row("npo", "lr~1e-3", s, "forget_mcq_acc", npo[s]))
        rows.append(_row("prism", "lr~1e-3", s, "forget_mcq_acc", npo[s] + prism_minus_npo[s]))
        # weight noise: two draws per model seed, pooled into one value per seed (mean 0.6 + s/100)
        for draw, off in ((0, -0.01), (1, 0.01)):
            rows.append(_row("npo", "lr~1e-3", s, "forget_mcq_acc", 0.6 + s / 100 + off, "weight_noise",
                             f"seed~{draw}_sigma~0.02"))
    rows.append(_row("prism", "lr~1e-3", 6, "forget_mcq_acc", 0.1))            # no NPO partner: not paired
    rows.append(_row("npo", "lr~1e-3", 7, "forget_mcq_acc", math.nan, status="diverged"))
    return pd.DataFrame(rows), npo, prism_minus_npo


def test_t_interval_and_sign_flip_hand_values():
    mean, std, lo, hi = t_interval([1.0, 2.0, 3.0])
    # mean 2, std 1, t_{0.975,2} = 4.303, half-width 4.303/√3 = 2.4843
    assert (mean, std) == (2.0, 1.0) and lo == pytest.approx(2 - 2.48434, abs=1e-4)
    assert hi == pytest.approx(2 + 2.48434, abs=1e-4)
    assert math.isnan(t_interval([1.0])[2])
    # all six differences negative: only the identity and the all-flipped assignment reach |mean| → 2/64
    assert sign_flip_p([-1, -2, -1, -3, -1, -2]) == pytest.approx(2 / 64)
    assert sign_flip_p([-1, -2, -1, -3, -1]) == pytest.approx(2 / 32)       # the 5-seed floor
    # d = (1, −1, 2), observed |Σd| = 2; the 8 signed sums are 2, −2, 4, 0, 0, −4, 2, −2 → |·| ≥ 2 in 6 of 8
    assert sign_flip_p([1.0, -1.0, 2.0]) == pytest.approx(6 / 8)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert math.isnan(sign_flip_p([0.3]))


def test_paired_prism_minus_npo(frame):
    df, npo, diff = frame
    out = paired_differences(df)
    assert list(out.columns) == PAIRED_COLUMNS
    clean = out[(out.attack == "none") & (out.metric == "forget_mcq_acc")]
    assert len(clean) == 1
    r = clean.iloc[0]
    assert (r.method_a, r.method_b, r.params_a, r.params_b) == ("prism", "npo", "lr~1e-3", "lr~1e-3")
    d = list(diff.values())
    assert r.n_seeds == 6                                 # seed 6 has no partner, seed 7 diverged
    assert r.mean_diff == pytest.approx(sum(d) / 6)       # −0.04
    m, s, lo, hi = t_interval(d)
    assert (r.ci_low, r.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert lo == pytest.approx(-0.04 - 2.571 * s / math.sqrt(6))
    assert r.p_value == pytest.approx(2 / 64)             # every seed agrees on the sign
    # base has no seed: never paired; weight noise has NPO only: no pair
    assert "base" not in set(out.method_a) | set(out.method_b)
    assert out[out.attack == "weight_noise"].empty


def test_intervals_pool_attack_seeds(frame):
    df, npo, _ = frame
    iv = seed_intervals(df)
    wn = iv[(iv.method == "npo") & (iv.attack == "weight_noise")].iloc[0]
    assert wn.attack_params == "sigma~0.02" and wn.n_seeds == 6
    assert wn["mean"] == pytest.approx(0.6 + sum(range(6)) / 600)
    clean = iv[(iv.method == "npo") & (iv.attack == "none")].iloc[0]
    assert clean.n_seeds == 6 and clean["mean"] == pytest.approx(sum(npo.values()) / 6)
    one = iv[(iv.method == "prism") & (iv.attack == "none")].iloc[0]
    assert one.n_seeds == 7


def test_write_paired_tables(frame, tmp_path):
    df, _, _ = frame
    paths = write_paired_tables(df, tmp_path)
    assert [p.name for p in paths] == ["intervals.csv", "paired.csv"]
    back = pd.read_csv(tmp_path / "paired.csv")
    assert list(back.columns) == PAIRED_COLUMNS and len(back) == 1
    # a one-seed tree: header only would hide nothing; one common seed gives NaN interval and p-value
    one = df[df.seed.isin(["0", "-"])]
    p = paired_differences(one)
    assert len(p) == 1 and p.n_seeds.iloc[0] == 1 and math.isnan(p.p_value.iloc[0]) and math.isnan(p.ci_low.iloc[0])
