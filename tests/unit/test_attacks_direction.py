"""Direction attacks: λ = 1 steering moves the forget centre onto the acceptance centre; ablation removes d̂."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks import direction as D  # noqa: E402
from robust_unlearning.attacks.common import capture_block_output  # noqa: E402
from robust_unlearning.metrics.margin import anchor_prompts, split_half  # noqa: E402


def test_steering_and_ablation_geometry(micro_model, tiny_tokenizer):
    d_a, d_b = anchor_prompts(S.FakeBench(), "mcq")
    res = D.acceptance_direction(micro_model, tiny_tokenizer, d_a, d_b, 1, seed=0)
    assert abs(float(res["e_a"].norm()) - 1) < 1e-5 and res["n_fit_a"] == 2
    fb, _ = split_half(len(d_b), 0, "D_b")
    fit_b = [d_b[i] for i in fb]
    with D.direction_hooks(micro_model, "steer", res["e_a"], 1.0 * res["norm"], 1, []):
        z = D.last_token_block_output(micro_model, tiny_tokenizer, fit_b, 1)
    assert torch.allclose(z.mean(0), res["c_a"], atol=1e-4)        # c_b + (c_a − c_b) = c_a
    with D.direction_hooks(micro_model, "ablate", res["e_a"], 0.0, 1, [0, 1]):
        with capture_block_output(micro_model, 1) as st:
            D.last_token_block_output(micro_model, tiny_tokenizer, d_b, 1)
    assert (st["h"] @ res["e_a"]).abs().max() < 1e-4


def test_direction_prepare_evaluate(micro_model, tiny_tokenizer, tmp_path, monkeypatch):
    S.install_fallbacks(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    doc = D.Direction.prepare(src, S.FakeBench(), {"lam": 1.5, "max_new_tokens": 4}, tmp_path / "a", 0, "cpu")
    assert doc["result"]["layer"] == 1 and (tmp_path / "a" / D.VECTORS).is_file()
    m, items = D.Direction.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=0)
    assert {"asr", "asr_ci_low", "asr_ci_high", "refusal_rate", "forget_mcq_acc", "forget_mcq_acc_clean",
            "retain_mcq_acc"} <= set(m) and len(items) == 4
    D.Direction.prepare(src, S.FakeBench(), {"mode": "ablate", "max_new_tokens": 4}, tmp_path / "b", 0, "cpu")
    m2, _ = D.Direction.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "b", {}, seed=0)
    assert m2["forget_mcq_acc_clean"] == m["forget_mcq_acc_clean"]


def test_diff_ablate_removes_what_unlearning_changed(micro_model, tiny_tokenizer, tmp_path):
    """Prepared on the original model: attacking the original itself changes nothing (every d_l = 0); on a
    changed model, each block's output loses its component along that block's d̂_l."""
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "m")
    D.Direction.prepare(src, S.FakeBench(), {"mode": "diff_ablate", "lam": 1.0, "max_new_tokens": 4},
                        tmp_path / "a", 0, "cpu")
    m, _ = D.Direction.evaluate(micro_model, tiny_tokenizer, S.FakeBench(), tmp_path / "a", {}, seed=0)
    assert m["n_ablated_layers"] == 0 and m["diff_norm_max"] == 0.0 and m["asr"] == m["asr_clean"]
    with torch.no_grad():  # "unlearning": shift block 0's output projection
        micro_model.model.layers[0].mlp.down_proj.weight.add_(0.05)
    from safetensors.torch import load_file
    base = load_file(str(tmp_path / "a" / D.VECTORS))["base_means"]
    _, d_b = anchor_prompts(S.FakeBench(), "mcq")
    dirs, _ = D.diff_directions(D.forget_block_means(micro_model, tiny_tokenizer, d_b, 0), base)
    assert set(dirs) == {0, 1}
    with D.direction_hooks(micro_model, "diff_ablate", None, 0.0, 0, [], per_layer=dirs, lam=1.0):
        with capture_block_output(micro_model, 1) as st:
            D.last_token_block_output(micro_model, tiny_tokenizer, d_b, 1)
    assert (st["h"] @ dirs[1]).abs().max() < 1e-4
