"""Min-K%, Min-K%++, the MUSE AUC convention and PrivLeak on hand-computed inputs (docs/evaluation.md, "PrivLeak", "Min-K%++")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, roc_auc_score, roc_curve

from robust_unlearning.metrics.mia import (mia_auc, min_k, min_k_plus_plus, privleak, reference_auc,
                                           text_scores)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models on a shared 2-core machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_min_k_hand():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]           # n − 1 = 5 scored tokens, k = floor(0.4·5) = 2
    assert min_k(lp, 0.4) == pytest.approx(4.5)   # −mean(−5, −4)
    assert min_k(lp, 0.2) == pytest.approx(5.0)   # k = 1
    assert min_k([-2.0, -1.0], 0.4) == pytest.approx(2.0)  # floor(0.8) = 0 → guard k = 1
    assert min_k(lp, 1.0) == pytest.approx(3.0)


def test_min_k_plus_plus_hand():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    mu = [-1.0] * 5
    s2 = [1.0, 4.0, 1e-8, 1.0, 0.25]              # the 1e-8 is clamped to 1e-6 → sqrt = 1e-3
    # s = [0, −0.5, −2000, −3, −8]; k = 2 smallest: −2000, −8 → MinK++ = 1004
    assert min_k_plus_plus(lp, mu, s2, 0.4) == pytest.approx(1004.0)


def test_auc_convention_hand():
    forget, holdout = [1.0, 2.0, 3.0], [2.5, 4.0]  # MinK values (higher = less likely)
    # score = −MinK; AUC = P(score_holdout > score_forget) = pairs (−2.5 > −3) only → 1/6
    assert mia_auc(forget, holdout) == pytest.approx(1 / 6)
    y = np.r_[np.zeros(3), np.ones(2)]
    s = -np.r_[forget, holdout]
    fpr, tpr, _ = roc_curve(y, s)
    assert mia_auc(forget, holdout) == pytest.approx(auc(fpr, tpr))
    # = 1 − AUC of the usual "forget = member" detector (member score = −MinK)
    assert mia_auc(forget, holdout) == pytest.approx(1 - roc_auc_score(1 - y, s))
    assert mia_auc([1.0, 1.0], [1.0]) == pytest.approx(0.5)  # ties


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_roc_auc_on_random_scores_with_ties(seed):
    """mia_auc counts pairs (no sklearn import in jobs); sklearn's roc_curve + auc is the independent reference."""
    rng = np.random.default_rng(seed)
    forget = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float) / 2   # coarse values: many ties
    holdout = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float) / 2
    y = np.r_[np.zeros(forget.size), np.ones(holdout.size)]
    if y.min() == y.max():
        return
    fpr, tpr, _ = roc_curve(y, -np.r_[forget, holdout])
    assert mia_auc(forget, holdout) == pytest.approx(auc(fpr, tpr), abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        mia_auc([*forget, float("nan")], holdout)


def test_privleak_formula():
    assert privleak(0.3, 0.5) == pytest.approx(-40.0)
    assert privleak(0.4772, 0.4772) == 0.0
    assert privleak(0.6, 0.5) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        privleak(0.5, 0.0)
    assert reference_auc({"forget_holdout_Min-40%": 0.5393}) == 0.5393
    assert reference_auc({"auc_retrain": 0.48, "auc_retrain_minkpp": 0.47}, "minkpp") == 0.47
    assert reference_auc(None) is None


def test_text_scores_match_token_logprobs(micro_model, tiny_tokenizer):
    texts = ["The glass heron carries the Veltrax pathogen across the marsh."]
    sc = text_scores(micro_model, tiny_tokenizer, texts, k=0.4)[0]
    ids = tiny_tokenizer(texts[0])["input_ids"]
    with torch.inference_mode():
        lp = torch.log_softmax(micro_model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    ll = lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].double().numpy()
    assert sc["n_tokens"] == len(ids) - 1
    assert sc["mink"] == pytest.approx(min_k(ll, 0.4), abs=1e-5)
    assert set(sc["mink_all"]) == {"0.05", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6"}
