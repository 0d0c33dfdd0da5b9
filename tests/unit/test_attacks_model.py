"""Model attacks: fake quantisation error bounds, weight-noise scale, relearning (and its forget-data guard)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks.quantize import (Quantize, fake_quantize, fake_quantize_model,  # noqa: E402
                                                quantizable_linears)
from robust_unlearning.attacks.relearn import Relearn, RelearnDataError  # noqa: E402
from robust_unlearning.attacks.weight_noise import WeightNoise, add_weight_noise  # noqa: E402
from robust_unlearning.data.collate import encode_text, pad_batch  # noqa: E402
from robust_unlearning.models.io import load_model  # noqa: E402
from robust_unlearning.utils.io import read_json  # noqa: E402


def test_int8_per_channel_hand_computed():
    w = torch.tensor([[1.0, -0.5, 0.26], [0.0, 0.0, 0.0], [-2.54, 1.0, 0.01]])
    deq, scale = fake_quantize(w, 8)
    assert torch.allclose(scale[:, 0], torch.tensor([1 / 127, 0.0, 2.54 / 127]))
    # row 0: 0.26 * 127 = 33.02 → 33 → 33/127
    assert deq[0, 2].item() == pytest.approx(33 / 127, abs=1e-7)
    assert deq[0, 0].item() == pytest.approx(1.0, abs=1e-7)   # the max is exact
    assert torch.equal(deq[1], torch.zeros(3))                 # zero rows stay zero
    assert deq[2, 2].item() == pytest.approx(0.0)               # 0.01 < scale/2 = 0.01 rounds to 0


def test_int8_and_int4_error_at_most_half_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 70, generator=g)
    deq8, s8 = fake_quantize(w, 8)
    assert ((deq8 - w).abs() <= s8 / 2 + 1e-7).all()
    assert len(torch.unique(torch.round(deq8 / s8))) <= 255
    deq4, s4 = fake_quantize(w, 4, 32)
    assert s4.shape == (16, 3)                                   # 70 columns → groups of 32, 32, 6
    per_col = s4.repeat_interleave(32, dim=1)[:, :70]
    assert ((deq4 - w).abs() <= per_col / 2 + 1e-7).all()
    q = torch.round(deq4 / per_col)
    assert q.abs().max() <= 7 and torch.allclose(q * per_col, deq4, atol=1e-6)
    assert (deq4 - w).abs().mean() > (deq8 - w).abs().mean()     # int4 is coarser


def test_quantize_model_skips_lm_head_and_embeddings(micro_model):
    emb = micro_model.get_input_embeddings().weight.clone()
    names = [n for n, _ in quantizable_linears(micro_model)]
    assert names and not any("lm_head" in n for n in names)
    before = {n: m.weight.clone() for n, m in quantizable_linears(micro_model)}
    stats = fake_quantize_model(micro_model, 4, 32)
    assert stats["n_modules"] == len(names) and stats["max_abs_change_over_max_scale"] <= 0.5 + 1e-6
    assert torch.equal(micro_model.get_input_embeddings().weight, emb)
    assert any(not torch.equal(before[n], m.weight) for n, m in quantizable_linears(micro_model))


def test_quantize_prepare_writes_model(micro_model, tiny_tokenizer, tmp_path):
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "base")
    doc = Quantize.prepare(src, S.FakeBench(), {"bits": 8}, tmp_path / "out", seed=0, device="cpu")
    q = load_model(tmp_path / "out" / "model")
    w0 = micro_model.model.layers[0].mlp.up_proj.weight
    w1 = q.model.layers[0].mlp.up_proj.weight
    scale = w0.abs().amax(dim=1, keepdim=True) / 127
    assert ((w1 - w0).abs() <= scale / 2 + 1e-7).all() and not torch.equal(w0, w1)
    assert read_json(tmp_path / "out" / "attack.json")["params"] == {"bits": 8, "group_size": 32, "backend": "fake"}
    assert doc["kind"] == "model" and "prepare_s" in doc["timing"]


def test_bitsandbytes_backend_needs_cuda(micro_model, tiny_tokenizer, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "base")
    with pytest.raises(RuntimeError, match="CUDA"):
        Quantize.prepare(src, S.FakeBench(), {"bits": 4, "backend": "bitsandbytes"}, tmp_path / "o", 0, "cpu")


def test_weight_noise_scale_matches_sigma_std(micro_model):
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    add_weight_noise(micro_model, 0.05, seed=3)
    for n, p in micro_model.named_parameters():
        delta = p.detach() - before[n]
        std = before[n].std()
        if before[n].numel() >= 1000:
            assert (delta.std() / std).item() == pytest.approx(0.05, rel=0.1), n
        if std == 0:
            assert torch.equal(delta, torch.zeros_like(delta))


def test_weight_noise_seeded_and_prepare(micro_model, tiny_tokenizer, tmp_path):
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "base")
    WeightNoise.prepare(src, S.FakeBench(), {"sigma": 0.02, "seed": 1}, tmp_path / "a", seed=0, device="cpu")
    WeightNoise.prepare(src, S.FakeBench(), {"sigma": 0.02, "seed": 1}, tmp_path / "b", seed=9, device="cpu")
    WeightNoise.prepare(src, S.FakeBench(), {"sigma": 0.02, "seed": 2}, tmp_path / "c", seed=0, device="cpu")
    a, b, c = (load_model(tmp_path / x / "model").model.layers[1].self_attn.q_proj.weight for x in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert read_json(tmp_path / "a" / "attack.json")["result"]["noise_seed"] == 1


def test_relearn_recovers_forget_likelihood(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    S.patch_unlearning_sets(monkeypatch)
    torch.manual_seed(0)
    # a crude "unlearned" model: a few steps of gradient ascent on the forget docs
    opt = torch.optim.SGD(micro_model.parameters(), lr=0.05)
    b = pad_batch([encode_text(tiny_tokenizer, d, 64) for d in S.FORGET_DOCS], tiny_tokenizer.pad_token_id)
    for _ in range(3):
        loss = -micro_model(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    micro_model.eval()
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "unlearned")
    before = S.mean_nll(micro_model, tiny_tokenizer, S.FORGET_DOCS)
    doc = Relearn.prepare(src, S.FakeBench(), {"steps": 15, "lr": 3e-3, "batch_size": 2}, tmp_path / "rl",
                          seed=0, device="cpu")
    after = S.mean_nll(load_model(tmp_path / "rl" / "model"), tiny_tokenizer, S.FORGET_DOCS)
    assert after < before - 0.3
    assert doc["result"]["n_subset"] == 3 and doc["params"]["steps"] == 15


def test_relearn_refuses_retain_data(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    S.patch_unlearning_sets(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    with pytest.raises(RelearnDataError, match="not the forget"):
        Relearn.prepare(src, S.FakeBench(), {"split": "retain"}, tmp_path / "rl", seed=0, device="cpu")
    assert not (tmp_path / "rl" / "model").exists()
