"""General-knowledge utility metrics (general_ppl, general_mcq_acc): shipped data, hand-checked values."""
from __future__ import annotations

import math

import pytest
import torch

from robust_unlearning.metrics.evaluate import EvalConfig, evaluate_model
from robust_unlearning.metrics.general import general_mcq, general_passages, perplexity
from robust_unlearning.metrics.generation import token_logprobs
from robust_unlearning.metrics.mcq import score_mcq


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_shipped_general_data_is_well_formed():
    mcq, passages = general_mcq(), general_passages()
    assert len(mcq) >= 300 and len(passages) >= 30
    assert len({r["id"] for r in mcq}) == len(mcq) and len({r["id"] for r in passages}) == len(passages)
    for r in mcq:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4, r
        assert 0 <= r["answer"] < 4 and r["question"].endswith("?")
    assert {r["category"] for r in mcq} >= {"capitals", "science", "literature", "arithmetic"}
    # the gold answer sits in every position (no position bias a model could exploit)
    assert {r["answer"] for r in mcq} == {0, 1, 2, 3}
    assert all(len(p["text"].split()) >= 30 for p in passages)


def test_perplexity_is_token_weighted():
    lps = [torch.tensor([-1.0, -3.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)]
    ppl, nll, n = perplexity(lps)
    assert n == 3 and nll == pytest.approx(2.0) and ppl == pytest.approx(math.exp(2.0))
    assert math.isnan(perplexity([])[0])


def test_general_metrics_match_direct_scoring(micro_model, tiny_tokenizer):
    cfg = EvalConfig.from_dict({"metrics": ["general_ppl", "general_mcq_acc"], "max_items": 6, "batch_size": 4,
                                "progress": False})
    metrics, items = evaluate_model(micro_model, tiny_tokenizer, bench=None, eval_cfg=cfg)
    texts = [p["text"] for p in general_passages()[:6]]
    lps = [s["logprobs"] for s in token_logprobs(micro_model, tiny_tokenizer, texts, batch_size=1)]
    assert metrics["general_ppl"] == pytest.approx(perplexity(lps)[0], rel=1e-6)
    assert metrics["general_nll"] == pytest.approx(math.log(metrics["general_ppl"]), rel=1e-6)
    rows = general_mcq()[:6]
    scored = score_mcq(micro_model, tiny_tokenizer, rows, "cloze", add_bos=True, batch_size=1)
    expected = sum(s["pred_norm"] == s["gold"] for s in scored) / 6   # default mcq_norm acc_norm
    assert metrics["general_mcq_acc"] == pytest.approx(expected)
    assert {it["metric"] for it in items} == {"general_ppl", "general_mcq_acc"}
    assert sum(it["metric"] == "general_mcq_acc" for it in items) == 6


def test_general_metrics_are_opt_in():
    from robust_unlearning.metrics.evaluate import DEFAULT_METRICS

    assert "general_ppl" not in DEFAULT_METRICS and "general_mcq_acc" not in DEFAULT_METRICS
    units = EvalConfig.from_dict({"metrics": ["general_mcq_acc"], "max_items": {"general_ppl": 3}}).resolved()
    assert units == [("general_mcq_acc", None)]
