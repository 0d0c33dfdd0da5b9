"""Latent PGD: ε = 0 is exactly the clean model; the attack loss improves with ε; δ stays in its balls."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks import latent as L  # noqa: E402
from robust_unlearning.attacks.common import capture_block_output, forget_qa_items  # noqa: E402


def _rows(tok):
    items = forget_qa_items(S.FakeBench(), "mcq")
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": it["question"]}], tokenize=False,
                                           add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for it in items]
    targets = [tok(it["answer"], add_special_tokens=False)["input_ids"] for it in items]
    return L.TeacherRows(prompts, targets, tok.pad_token_id, "cpu"), items


def test_eps_zero_is_clean_and_loss_improves_with_eps(micro_model, tiny_tokenizer):
    rows, _ = _rows(tiny_tokenizer)
    with torch.no_grad():
        clean_ref = rows.nll(micro_model)
    nll = {}
    for eps in (0.0, 0.1, 0.5):
        gen = torch.Generator().manual_seed(0)
        delta, clean, att = L.pgd_hidden(micro_model, rows, 1, eps, 8, True, gen)
        assert torch.allclose(clean, clean_ref)
        nll[eps] = float(att.mean())
        if eps == 0.0:
            assert torch.count_nonzero(delta) == 0 and torch.equal(att, clean)
        else:
            with torch.no_grad(), capture_block_output(micro_model, 1) as st:
                rows.nll(micro_model)
            norms = st["h"].norm(dim=-1)
            assert (delta.norm(dim=-1) <= eps * norms * rows.prompt_mask + 1e-5).all()
            assert torch.count_nonzero(delta[~rows.prompt_mask]) == 0
    assert nll[0.5] < nll[0.1] < nll[0.0]          # target log-prob increases with ε


def test_latent_evaluate_eps_zero_matches_clean_outputs(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    L.Latent.prepare(None, S.FakeBench(), {"eps": 0.0, "steps": 2, "max_new_tokens": 6}, tmp_path / "a", 0, "cpu")
    m, items = L.Latent.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=0)
    assert all(it["output"] == it["meta"]["clean_output"] for it in items)
    assert m["forget_qa_logprob_gain"] == pytest.approx(0.0, abs=1e-6) and m["asr"] == m["asr_clean"]
    L.Latent.prepare(None, S.FakeBench(), {"eps": 0.5, "steps": 4, "max_new_tokens": 6, "batch_size": 3},
                     tmp_path / "b", 0, "cpu")
    m2, _ = L.Latent.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "b", {}, seed=0)
    assert m2["forget_qa_logprob_gain"] > 0 and m2["layer"] == 1


def test_prompt_delta_reaches_generation(micro_model, tiny_tokenizer, monkeypatch):
    S.install_fallbacks(monkeypatch)
    rows, _ = _rows(tiny_tokenizer)
    p = [rows.ids[0, :rows.prompt_len[0]].tolist()]
    big = [torch.randn(rows.prompt_len[0], 32, generator=torch.Generator().manual_seed(0)) * 50]
    a = L.generate_with_prompt_delta(micro_model, tiny_tokenizer, p, big, 0, 6)
    b = L.generate_with_prompt_delta(micro_model, tiny_tokenizer, p, [torch.zeros_like(big[0])], 0, 6)
    from robust_unlearning.attacks.common import generate_texts
    assert b == generate_texts(micro_model, tiny_tokenizer, p, max_new_tokens=6) and a != b
