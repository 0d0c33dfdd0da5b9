"""report/calibration.py: the sweep's selection rule on hand-made tables built by the real report/paired.py."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robust_unlearning.report.calibration import Criterion, choice_markdown, choose_setting
from robust_unlearning.report.paired import paired_differences, seed_intervals, write_paired_tables

ROOT = Path(__file__).resolve().parents[2]
RELEARN = ("relearn", "fraction~0.5_steps~20")


def _row(method, params, seed, metric, value, attack="none", aparams="default"):
    return {"benchmark": "synthetic", "method": method, "params": params, "seed": str(seed),
            "model_id": f"unlearn/{method}/{params}/seed~{seed}", "attack": attack, "attack_params": aparams,
            "metric": metric, "value": value, "status": "ok", "n_items": math.nan, "judge": "", "checkpoint": "-",
            "note": ""}


def _frame(settings: dict[str, tuple[float, list[float]]], npo_retain=0.80):
    """settings: sam_npo params -> (clean retain MCQ, forget MCQ after relearning per seed 0..2)."""
    rows = []
    for s in range(3):
        rows.append(_row("npo", "lr~1e-3", s, "retain_mcq_acc", npo_retain))
        rows.append(_row("npo", "lr~1e-3", s, "forget_mcq_acc", 0.70, *RELEARN))
        for params, (retain, forget) in settings.items():
            rows.append(_row("sam_npo", params, s, "retain_mcq_acc", retain))
            rows.append(_row("sam_npo", params, s, "forget_mcq_acc", forget[s], *RELEARN))
    df = pd.DataFrame(rows)
    return seed_intervals(df), paired_differences(df), df


def test_a_clearly_more_robust_eligible_setting_replaces_the_paper_closest():
    iv, pr, _ = _frame({"lr~1e-3_rho~0.01": (0.79, [0.70, 0.72, 0.71]),
                        "lr~1e-3_rho~0.05": (0.78, [0.60, 0.61, 0.63]),     # −0.097 ± small: interval < 0
                        "lr~1e-3_rho~0.1": (0.70, [0.40, 0.40, 0.40])})     # most robust, but 0.10 below NPO
    ch = choose_setting(iv, pr, "sam_npo", {"rho": "0.01"})
    assert ch.paper_closest == "lr~1e-3_rho~0.01"
    assert ch.candidate == ch.chosen == "lr~1e-3_rho~0.05"
    assert ch.paired["mean_diff"] == pytest.approx((0.60 + 0.61 + 0.63 - 0.70 - 0.72 - 0.71) / 3)
    assert ch.paired["ci_high"] < 0
    gate = dict(zip(ch.table["params"], ch.table["eligible"]))
    assert gate == {"lr~1e-3_rho~0.01": True, "lr~1e-3_rho~0.05": True, "lr~1e-3_rho~0.1": False}
    assert ch.reference_utility == pytest.approx(0.80)
    md = choice_markdown(ch)
    assert "**(chosen)**" in md and "| no |" in md and "excludes 0" in md


def test_a_difference_within_noise_keeps_the_paper_closest():
    # candidate lower on average, but the per-seed differences straddle 0: −0.10, +0.05, −0.04
    iv, pr, _ = _frame({"lr~1e-3_rho~0.01": (0.79, [0.70, 0.65, 0.71]),
                        "lr~1e-3_rho~0.05": (0.79, [0.60, 0.70, 0.67])})
    ch = choose_setting(iv, pr, "sam_npo", {"rho": "0.01"})
    assert ch.candidate == "lr~1e-3_rho~0.05" and ch.chosen == "lr~1e-3_rho~0.01"
    assert ch.paired["ci_low"] < 0 < ch.paired["ci_high"] and "includes 0" in ch.reason


def test_a_paper_closest_below_the_gate_gives_way_to_the_eligible_candidate():
    iv, pr, _ = _frame({"lr~1e-3_rho~0.01": (0.70, [0.50, 0.50, 0.50]),
                        "lr~1e-3_rho~0.05": (0.79, [0.60, 0.70, 0.67])})
    ch = choose_setting(iv, pr, "sam_npo", {"rho": "0.01"})
    assert ch.chosen == "lr~1e-3_rho~0.05" and "fails the utility gate" in ch.reason


def test_the_gate_is_a_floor_and_the_tolerance_is_applied():
    iv, pr, _ = _frame({"lr~1e-3_rho~0.01": (0.77, [0.70, 0.70, 0.70]),     # exactly 0.03 below: eligible
                        "lr~1e-3_rho~0.05": (0.95, [0.72, 0.72, 0.72])})    # above the reference: eligible
    ch = choose_setting(iv, pr, "sam_npo", {"rho": "0.01"})
    assert ch.table["eligible"].all() and ch.chosen == "lr~1e-3_rho~0.01"
    strict = choose_setting(iv, pr, "sam_npo", {"rho": "0.01"}, Criterion(utility_tolerance=0.01))
    assert list(strict.table["eligible"]) == [False, True]


def test_bad_names_are_errors():
    iv, pr, _ = _frame({"lr~1e-3_rho~0.01": (0.79, [0.7] * 3), "lr~1e-3_rho~0.05": (0.79, [0.7] * 3)})
    with pytest.raises(ValueError, match="matches 0 settings"):
        choose_setting(iv, pr, "sam_npo", {"rho": "0.02"})
    with pytest.raises(ValueError, match="no setting of method 'prism'"):
        choose_setting(iv, pr, "prism", {"rho": "0.01"})
    with pytest.raises(ValueError, match="utility_tolerance"):
        Criterion(utility_tolerance=-1)


def test_command_line_reads_the_aggregate_tables(tmp_path):
    _, _, df = _frame({"lr~1e-3_rho~0.01": (0.79, [0.70, 0.72, 0.71]),
                       "lr~1e-3_rho~0.05": (0.78, [0.60, 0.61, 0.63])})
    write_paired_tables(df, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = str(ROOT / "workflow/scripts/select_calibration.py")
    out = subprocess.run([sys.executable, script, str(tmp_path), "sam_npo:rho=0.01"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "Chosen: `lr~1e-3_rho~0.05`" in out
    bad = subprocess.run([sys.executable, script, str(tmp_path), "sam_npo:rho"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "not key=value" in bad.stderr
    missing = subprocess.run([sys.executable, script, str(tmp_path / "nope"), "sam_npo:rho=0.01"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "intervals.csv: no such file" in missing.stderr
