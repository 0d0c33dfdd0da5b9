"""Real benchmarks get every headline number, and a number that cannot be computed is a visible `missing` row:
- WMDP (hub-format fixtures): the Unlearn Score reads the names the scorers write and is in the table; a prompt
  attack that judged nothing is NaN / missing / `–` with a footnote and stays out of the robustness term;
- MUSE (hub-format fixtures): PrivLeak without a retrain oracle uses the published AUC_retrain and records it;
- a clean evaluation the score cannot use gets a `missing` Unlearn Score row naming the absent input;
- over-refusal samples XSTest stratified by label (its safe prompts come first in the file).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from robust_unlearning.data.muse import PUBLISHED_AUC_RETRAIN, prepare_muse
from robust_unlearning.data.wmdp import prepare_wmdp_dialogue
from robust_unlearning.metrics.asr import stratified_subset
from robust_unlearning.metrics.evaluate import evaluate_model
from robust_unlearning.metrics.mia import privleak
from robust_unlearning.metrics.registry import get_metric
from robust_unlearning.metrics.unlearn_score import input_metrics
from robust_unlearning.models.architectures import build_llama
from robust_unlearning.report.collect import collect_results
from robust_unlearning.report.tables import main_table, Cells, summary_markdown

HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
NPO = "unlearn/npo/beta~0.1/seed~0"


def _write(bench: Path, model_id: str, attack: str, params: str, metrics: dict, n_items: dict | None = None):
    d = bench / "eval" / model_id / attack / params
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps({"model": model_id, "attack": attack, "attack_params": params,
                                                "metrics": metrics, "n_items": n_items or {}, "status": "ok"}))


def _row(df, model_id, metric, attack="none", params="default"):
    sub = df[(df.model_id == model_id) & (df.attack == attack) & (df.attack_params == params) & (df.metric == metric)]
    assert len(sub) == 1, (model_id, attack, params, metric, len(sub))
    return sub.iloc[0]


def test_wmdp_unlearn_score_is_in_the_table_on_hub_fixtures(tmp_path, tiny_tokenizer):
    from robust_unlearning.data.formats import Benchmark

    data = tmp_path / "data"
    prepare_wmdp_dialogue({"name": "wmdp_dialogue", "source": str(HUB), "seed": 0,
                           "cache_dir": str(tmp_path / "cache")}, data)
    bench = Benchmark(data)
    # the letter scorer writes the same names as the lm-eval backend the preset uses
    lm_eval_names = {o.format(split=s) for s in ("forget", "retain") for o in get_metric("mcq_lm_eval").outputs}
    assert set(input_metrics("wmdp")) <= lm_eval_names
    cfg = {"metrics": ["mcq_letter:forget", "mcq_letter:retain"], "batch_size": 8}
    res = tmp_path / "results" / "wmdp_bio"
    for model_id, seed in (("models/base", 0), (NPO, 1)):
        model = build_llama(tiny_tokenizer, preset="micro-llama", seed=seed, max_position_embeddings=512).eval()
        metrics, items = evaluate_model(model, tiny_tokenizer, bench, cfg)
        assert {"forget_mcq_acc_letter", "retain_mcq_acc_letter"} <= set(metrics)
        _write(res, model_id, "none", "default", metrics)
    _write(res, NPO, "prefill", "k~15", {"asr": 0.3, "asr_ci_low": 0.1, "asr_ci_high": 0.6, "n_items": 10,
                                         "n_judged": 10})
    # AutoDAN / multi-turn on real files: nothing judged; the attack wrote 0.0 (or NaN) for an empty set
    _write(res, NPO, "multi_turn", "default", {"asr": 0.0, "asr_ci_low": 0.0, "asr_ci_high": 1.0, "n_items": 0})
    df = collect_results(res, "wmdp_bio")
    us = _row(df, NPO, "unlearn_score")
    assert us.status == "ok" and math.isfinite(us.value)
    assert _row(df, NPO, "us_privacy").value == pytest.approx(1 - 0.3)   # the empty set is not a perfect defence
    assert "judged nothing" in us.note
    empty = _row(df, NPO, "asr", "multi_turn")
    assert empty.status == "missing" and math.isnan(empty.value) and empty.n_items == 0
    assert "nothing was judged" in empty.note
    table = main_table(Cells(df))
    col = table.header.index("US")
    npo_row = next(r for r in table.rows if r[0].lower().startswith("npo"))
    assert npo_row[col] not in ("–", "missing", "")
    summary = summary_markdown(df, "wmdp_bio")
    assert "– ‡" in summary and "nothing was judged" in summary


def test_muse_privleak_uses_the_published_auc_retrain_without_an_oracle(tmp_path, tiny_tokenizer):
    from robust_unlearning.data.formats import Benchmark

    data = tmp_path / "data"
    prepare_muse("muse_news", {"name": "muse_news", "source": str(HUB), "cache_dir": str(tmp_path / "c")}, data)
    bench = Benchmark(data)
    model = build_llama(tiny_tokenizer, preset="micro-llama", seed=0, max_position_embeddings=2048).eval()
    m, _ = evaluate_model(model, tiny_tokenizer, bench, {"metrics": ["privleak"]})
    assert m["privleak_auc_retrain"] == PUBLISHED_AUC_RETRAIN["muse_news"] == 0.47719999999999996
    assert m["privleak_auc_retrain_published"] == 1.0
    assert m["privleak"] == privleak(m["privleak_auc"], 0.47719999999999996)
    with_oracle, _ = evaluate_model(model, tiny_tokenizer, bench, {"metrics": ["privleak"]},
                                    reference={"auc_retrain": 0.6})
    assert with_oracle["privleak_auc_retrain"] == 0.6 and with_oracle["privleak_auc_retrain_published"] == 0.0
    assert with_oracle["privleak"] == privleak(m["privleak_auc"], 0.6)
    # the report gets its Unlearn Score and says where AUC_retrain came from
    res = tmp_path / "results" / "muse_news"
    base = {"retain_knowmem": 40.0, "forget_verbmem": 60.0, "privleak": 0.0}
    _write(res, "models/base", "none", "default", base)
    _write(res, NPO, "none", "default", {"retain_knowmem": 30.0, "forget_verbmem": 15.0, **m})
    df = collect_results(res, "muse_news")
    assert math.isfinite(_row(df, NPO, "unlearn_score").value)
    assert "published MUSE constant" in _row(df, NPO, "privleak").note


def test_a_score_that_cannot_be_computed_is_a_visible_missing_row(tmp_path):
    res = tmp_path / "synthetic"
    full = {"retain_mcq_acc": 0.9, "forget_verbmem": 50.0, "privleak": -5.0}
    _write(res, "models/base", "none", "default", full)
    _write(res, NPO, "none", "default", {"retain_mcq_acc": 0.8, "forget_verbmem": 10.0})   # no privleak
    df = collect_results(res, "synthetic")
    row = _row(df, NPO, "unlearn_score")
    assert row.status == "missing" and math.isnan(row.value) and "'privleak'" in row.note
    assert row.note.startswith("not computable")


def test_over_refusal_subset_is_stratified_by_label():
    rows = [{"id": i, "label": "safe"} for i in range(250)] + [{"id": 250 + i, "label": "unsafe"} for i in range(200)]
    sub = stratified_subset(rows, 32, seed=0)
    labels = [r["label"] for r in sub]
    # 32·250/450 = 17.8 → 18 safe, 32·200/450 = 14.2 → 14 unsafe (largest remainder)
    assert labels.count("safe") == 18 and labels.count("unsafe") == 14
    assert [r["id"] for r in sub] == sorted(r["id"] for r in sub)           # file order kept
    assert sub == stratified_subset(rows, 32, seed=0) and sub != stratified_subset(rows, 32, seed=1)
    assert stratified_subset(rows, None, 0) == rows and stratified_subset(rows[:3], 10, 0) == rows[:3]
    few = stratified_subset([{"label": "safe"}] * 40 + [{"label": "unsafe"}], 4, seed=0)
    assert [r["label"] for r in few].count("unsafe") == 1                  # every label at least once
