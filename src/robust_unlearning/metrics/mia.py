"""Membership inference: Min-K%, Min-K%++ and PrivLeak with the MUSE AUC convention (docs/evaluation.md, "PrivLeak", "Min-K%++").

AUC convention (MUSE ``privleak.py``): label 0 = forget texts, label 1 = holdout texts, score = −MinK(x)
(= the mean of the k lowest token log-likelihoods), the area under the ROC curve as ``sklearn.metrics.roc_curve``
+ ``auc`` compute it (tests/unit/test_metrics_mia.py compares with sklearn; computed here as the Mann–Whitney
statistic, ties counted half, which is the same number without importing sklearn, ~2 s per evaluation job). This is
1 − AUC of the usual "forget = member" detector: a model that still knows the forget texts gives AUC < 0.5.
PrivLeak = 100 · (AUC − AUC_retrain) / AUC_retrain: ≈ 0 ideal, < 0 under-unlearning, > 0 over-unlearning.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from .generation import token_logprobs
from .registry import EvalContext, item_id, record, register_metric

log = logging.getLogger(__name__)

LOGGED_KS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
SIGMA2_FLOOR = 1e-6


def _k_count(n: int, k: float) -> int:
    """k = floor(K · n) over the n scored tokens, at least 1 [our guard]."""
    return max(1, int(math.floor(k * n)))


def min_k(logprobs: Sequence[float], k: float = 0.4) -> float:
    """MinK(x) = −mean of the floor(K·(n−1)) smallest token log-likelihoods (higher = less likely)."""
    lp = np.sort(np.asarray(logprobs, dtype=np.float64))
    if lp.size == 0:
        return float("nan")
    return float(-lp[: _k_count(lp.size, k)].mean())


def min_k_plus_plus(logprobs: Sequence[float], mu: Sequence[float], sigma2: Sequence[float], k: float = 0.4) -> float:
    """MinK++(x) = −mean of the k smallest s_t = (ℓ_t − μ_t) / sqrt(max(σ²_t, 1e-6)) (docs/evaluation.md, "Min-K%++")."""
    lp, m, s2 = (np.asarray(a, dtype=np.float64) for a in (logprobs, mu, sigma2))
    if lp.size == 0:
        return float("nan")
    s = (lp - m) / np.sqrt(np.maximum(s2, SIGMA2_FLOOR))
    return float(-np.sort(s)[: _k_count(s.size, k)].mean())


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC-AUC with forget = label 0, holdout = label 1, score = −MinK (MUSE ``sweep``).

    ``*_scores`` are MinK values (higher = less likely), i.e. what ``min_k``/``min_k_plus_plus`` return.
    """
    f = np.asarray(forget_scores, dtype=np.float64)
    h = np.asarray(holdout_scores, dtype=np.float64)
    if f.size == 0 or h.size == 0:
        return float("nan")
    if np.isnan(f).any() or np.isnan(h).any():   # as sklearn's roc_curve: a NaN score has no rank
        raise ValueError("mia_auc: NaN among the Min-K scores")
    # score = −MinK and holdout is the positive class, so a pair counts when −h > −f, i.e. h < f; ties count ½.
    # The trapezoidal area under sklearn's ROC curve is exactly this pair count over |f|·|h|.
    f_sorted = np.sort(f)
    above = f.size - np.searchsorted(f_sorted, h, side="right")     # forget values strictly greater than each h
    tied = np.searchsorted(f_sorted, h, side="right") - np.searchsorted(f_sorted, h, side="left")
    return float((above.sum() + 0.5 * tied.sum()) / (f.size * h.size))


def privleak(auc_value: float, auc_retrain: float) -> float:
    """PrivLeak = 100 · (AUC − AUC_retrain) / AUC_retrain (docs/evaluation.md, "PrivLeak")."""
    if not auc_retrain:
        raise ValueError("auc_retrain must be a non-zero AUC")
    return 100.0 * (float(auc_value) - float(auc_retrain)) / float(auc_retrain)


def reference_auc(reference: dict | None, kind: str = "mink") -> float | None:
    """AUC_retrain from a reference dict: ``auc_retrain`` (or MUSE's key ``forget_holdout_Min-40%``);
    Min-K%++: ``auc_retrain_minkpp``."""
    if not reference:
        return None
    keys = ("auc_retrain", "forget_holdout_Min-40%") if kind == "mink" else ("auc_retrain_minkpp",)
    for key in keys:
        if reference.get(key) is not None:
            return float(reference[key])
    return None


def text_scores(model, tokenizer, texts: Sequence[str], k: float = 0.4, batch_size: int = 16,
                progress: bool | None = None) -> list[dict]:
    """Per text: Min-K (K = k), Min-K%++ (same k), Min-K for every K in ``LOGGED_KS``, token count."""
    out = []
    for rec in token_logprobs(model, tokenizer, texts, batch_size=batch_size, add_bos=True, with_stats=True,
                              progress=progress):
        lp = rec["logprobs"].numpy()
        out.append({"mink": min_k(lp, k), "minkpp": min_k_plus_plus(lp, rec["mu"].numpy(), rec["sigma2"].numpy(), k),
                    "mink_all": {f"{kk:g}": min_k(lp, kk) for kk in LOGGED_KS}, "n_tokens": int(lp.size)})
    return out


@register_metric("privleak", splits=(None,),
                 outputs=("privleak", "privleak_auc", "privleak_minkpp_auc", "privleak_minkpp"))
def privleak_metric(ctx: EvalContext, split: str | None = None):
    """Min-40% AUC (forget vs holdout), Min-K%++ AUC, and PrivLeak(++) where the oracle AUC is in ``reference``.
    Retain texts are scored and logged only."""
    k = float(ctx.cfg.mink_k)
    scores, items = {}, []
    for sp in ("forget", "holdout", "retain"):
        texts = ctx.limit(ctx.bench.privleak(sp), "privleak")
        sc = text_scores(ctx.model, ctx.tokenizer, texts, k=k, batch_size=ctx.cfg.batch_size,
                         progress=ctx.cfg.progress)
        scores[sp] = sc
        for i, (t, s) in enumerate(zip(texts, sc)):
            items.append(record(item_id(t, f"privleak/{sp}", i), sp, "privleak", t, "", s["mink"],
                                {"minkpp": s["minkpp"], "mink_all": s["mink_all"], "n_tokens": s["n_tokens"],
                                 "k": k, "counted": sp != "retain"}))
    metrics = {"privleak_auc": mia_auc([s["mink"] for s in scores["forget"]], [s["mink"] for s in scores["holdout"]]),
               "privleak_minkpp_auc": mia_auc([s["minkpp"] for s in scores["forget"]],
                                              [s["minkpp"] for s in scores["holdout"]])}
    for name, auc_name, kind in (("privleak", "privleak_auc", "mink"), ("privleak_minkpp", "privleak_minkpp_auc",
                                                                          "minkpp")):
        ref = reference_auc(ctx.reference, kind)
        if ref is None:
            continue
        if ref == 0:   # relative to 0: undefined. NaN, which the tables show as `missing` (never 0, never a crash)
            log.warning("%s not computable: the retrain oracle's AUC is 0 (PrivLeak is relative to it)", name)
            metrics[name] = float("nan")
        else:
            metrics[name] = privleak(metrics[auc_name], ref)
    return metrics, items
