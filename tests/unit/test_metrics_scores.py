"""Unlearn Score, Wilson interval / ASR, over-refusal summary and representation margin on hand values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from robust_unlearning.metrics.asr import asr_summary, best_of_n, over_refusal_summary, wilson_interval
from robust_unlearning.metrics.margin import margin_summary, margins, split_half
from robust_unlearning.metrics.unlearn_score import unlearn_score

TARGET = {"retain_knowmem": 50.0, "forget_verbmem": 80.0, "forget_knowmem": 40.0, "privleak": -60.0}


def test_unlearn_score_hand():
    m = {"retain_knowmem": 40.0, "forget_verbmem": 20.0, "forget_knowmem": 10.0, "privleak": -10.0}
    us = unlearn_score(m, TARGET)
    assert us["us_utility"] == pytest.approx(0.8)
    assert us["us_effectiveness"] == pytest.approx(0.75)
    assert us["us_privacy"] == pytest.approx(0.9)
    assert us["unlearn_score"] == pytest.approx((0.8 * 0.75 * 0.9) ** (1 / 3))
    both = unlearn_score(m, TARGET, mode="verbmem+knowmem")
    assert both["us_effectiveness"] == pytest.approx((0.75 + 0.75) / 2)


def test_unlearn_score_clipping():
    m = {"retain_knowmem": 60.0, "forget_verbmem": 100.0, "privleak": 150.0}
    us = unlearn_score(m, TARGET)
    assert us["us_utility"] == 1.0            # 60/50 clipped
    assert us["us_effectiveness"] == 0.0      # 1 − 100/80 < 0 clipped
    assert us["us_privacy"] == 0.0            # 1 − 150/100 < 0 clipped
    assert us["unlearn_score"] == 0.0
    zero_target = unlearn_score({"retain_knowmem": 0.0, "forget_verbmem": 0.0, "privleak": 0.0},
                                {"retain_knowmem": 0.0, "forget_verbmem": 0.0})
    assert zero_target["us_utility"] == 1.0 and zero_target["us_effectiveness"] == 0.0


def test_unlearn_score_synthetic_takes_utility_from_retain_mcq_above_chance():
    t = {**TARGET, "retain_mcq_acc": 0.95, "retain_knowmem": 1.0}
    m = {"retain_mcq_acc": 0.81, "retain_knowmem": 0.0, "forget_verbmem": 20.0, "privleak": -10.0}
    us = unlearn_score(m, t, mode="synthetic")
    assert us["us_utility"] == pytest.approx((0.81 - 0.25) / (0.95 - 0.25))     # 0.8, not KnowMem's 0/1 = 0
    assert us["us_effectiveness"] == pytest.approx(0.75) and us["us_privacy"] == pytest.approx(0.9)
    assert us["unlearn_score"] == pytest.approx((0.8 * 0.75 * 0.9) ** (1 / 3))
    assert unlearn_score({**m, "retain_mcq_acc": 0.2}, t, mode="synthetic")["us_utility"] == 0.0   # below chance


def test_unlearn_score_wmdp():
    # the names the lm-eval backend and the letter scorer write; a cloze number of the same split is not used
    t = {"retain_mcq_acc_letter": 0.65, "forget_mcq_acc_letter": 0.75, "forget_mcq_acc": 0.1}
    m = {"retain_mcq_acc_letter": 0.55, "forget_mcq_acc_letter": 0.30, "forget_mcq_acc": 0.9}
    no_r = unlearn_score(m, t, mode="wmdp")
    assert no_r["us_utility"] == pytest.approx(0.75) and no_r["us_effectiveness"] == pytest.approx(0.9)
    assert "us_privacy" not in no_r and no_r["unlearn_score"] == pytest.approx(math.sqrt(0.75 * 0.9))
    with_r = unlearn_score(m, t, mode="wmdp", asr_values=[0.2, 0.4, 0.1, 0.3])
    assert with_r["us_privacy"] == pytest.approx(0.75)
    assert with_r["unlearn_score"] == pytest.approx((0.75 * 0.9 * 0.75) ** (1 / 3))
    with pytest.raises(KeyError):
        unlearn_score({}, t, mode="wmdp")
    # an unmeasured ASR (NaN: nothing judged) is left out, never a perfect defence (ASR 0)
    nan_r = unlearn_score(m, t, mode="wmdp", asr_values=[0.2, 0.4, math.nan])
    assert nan_r["us_privacy"] == pytest.approx(0.7)
    only_nan = unlearn_score(m, t, mode="wmdp", asr_values=[math.nan])
    assert "us_privacy" not in only_nan and only_nan["unlearn_score"] == pytest.approx(math.sqrt(0.75 * 0.9))


def test_wilson_interval_hand():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    s = asr_summary([True, False, True, True])
    assert s["asr"] == 0.75 and s["asr_n"] == 4 and s["asr_lo"] < 0.75 < s["asr_hi"]
    assert best_of_n([[False, True], [False, False]]) == [True, False]


def test_over_refusal_summary():
    responses = ["I'm sorry, I cannot.", "Sure: it is 12 days.", "I play the piano.", "No. Never."]
    safe = [True, True, True, False]
    s = over_refusal_summary(responses, safe, answers_ok=[None, True, False, None])
    assert s["over_refusal"] == pytest.approx(2 / 3)      # "piano." counts under the substring rule
    assert s["over_refusal_wb"] == pytest.approx(1 / 3)
    assert s["unsafe_refusal"] == 1.0
    assert s["oversafe_asr"] == pytest.approx(1 / 4)
    assert s["lookalike_accuracy"] == pytest.approx(0.5)


def test_margin_hand():
    c_a, c_b = np.array([2.0, 0.0]), np.array([0.0, 0.0])
    z = np.array([[0.0, 0.0], [2.0, 5.0], [0.5, -1.0], [3.0, 0.0]])
    m, mn = margins(z, c_a, c_b)
    assert m.tolist() == pytest.approx([2.0, 0.0, 1.5, -1.0])
    assert mn.tolist() == pytest.approx([1.0, 0.0, 0.75, -0.5])  # 1 at c_b, 0 at c_a
    s = margin_summary(m, mn)
    assert s["repr_margin"] == pytest.approx(np.median(mn))
    assert s["repr_margin_p10"] == pytest.approx(np.percentile(mn, 10))
    fit, ev = split_half(10, seed=0, tag="D_b")
    assert sorted(fit + ev) == list(range(10)) and len(fit) == 5
    assert split_half(10, 0, "D_b") == (fit, ev)
