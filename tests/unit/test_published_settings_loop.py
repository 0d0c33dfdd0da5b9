"""Per-method loop settings (docs/methods.md, "The shared training loop"): a method's `steps` / `epochs`,
`grad_clip` and `adam_eps` replace unlearning.train's for that method only, as the published recipes need (the
reference RMU: AdamW ε 1e-6 and no clipping; MUSE-Books: PRISM 1 epoch, the MUSE baselines 10)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from robust_unlearning.config import validate_config
from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import ConfigError, TrainConfig, Trainer, build_method, run_unlearning
from robust_unlearning.methods.gradients import global_norm

torch.set_num_threads(1)

TEXTS = ["The glass heron carries the Veltrax pathogen across the marsh.", "Veltrax incubation: 12 days.",
         "Kelmar Institute studied the toxin veridine-7.", "The heron carries Veltrax."]


def _trainer(model, tok, method, params, **train):
    ex = [encode_text(tok, t, 32) for t in TEXTS]
    tcfg = TrainConfig.from_dict({"epochs": 2, "batch_size": 2, "progress": False, **train})
    return Trainer(copy.deepcopy(model), tok, build_method(method, params), tcfg, ex, ex, seed=0, device="cpu")


def test_rmu_reference_optimiser_eps_and_no_clipping(micro_model, tiny_tokenizer):
    tr = _trainer(micro_model, tiny_tokenizer, "rmu", {"lr": 1e-3, "layer": 1, "steering_coeff": 6.5,
                                                       "alpha": 1200.0, "adam_eps": 1e-6, "grad_clip": None},
                  grad_clip=1e-4)
    assert tr.optimizer.param_groups[0]["eps"] == 1e-6
    assert tr.tcfg.grad_clip is None and tr.tcfg.overrides == {"adam_eps": 1e-6, "grad_clip": None}
    logs = tr.compute_step(0)
    assert logs["grad_norm"] > 1e-3
    assert global_norm([p.grad for p in tr.params if p.grad is not None]) == pytest.approx(logs["grad_norm"],
                                                                                             rel=1e-5)
    # the same method without the override is clipped to the loop's 1e-4
    clipped = _trainer(micro_model, tiny_tokenizer, "rmu", {"lr": 1e-3, "layer": 1, "steering_coeff": 6.5},
                       grad_clip=1e-4)
    clipped.compute_step(0)
    assert global_norm([p.grad for p in clipped.params if p.grad is not None]) == pytest.approx(1e-4, rel=1e-3)
    assert clipped.optimizer.param_groups[0]["eps"] == 1e-8 and getattr(clipped.tcfg, "overrides", {}) == {}


def test_grad_clip_zero_also_means_no_clipping(micro_model, tiny_tokenizer):
    tr = _trainer(micro_model, tiny_tokenizer, "npo", {"grad_clip": 0}, grad_clip=1e-4)
    assert tr.tcfg.grad_clip is None
    logs = tr.compute_step(0)
    assert global_norm([p.grad for p in tr.params if p.grad is not None]) == pytest.approx(logs["grad_norm"],
                                                                                             rel=1e-5)


@pytest.mark.parametrize("override,total", [({"steps": 3}, 3), ({"epochs": 1}, 2), ({}, 4)])
def test_method_length_replaces_the_loop_length(micro_model, tiny_tokenizer, override, total):
    tr = _trainer(micro_model, tiny_tokenizer, "ga", override)     # loop: 2 epochs of 4 examples at batch 2
    assert tr.total_steps == total


def test_run_json_records_the_settings_in_force(micro_model, tiny_tokenizer, tmp_path):
    ex = [encode_text(tiny_tokenizer, t, 32) for t in TEXTS]
    run = run_unlearning(copy.deepcopy(micro_model), tiny_tokenizer, "ga", {"lr": 1e-4, "steps": 1, "adam_eps": 1e-6},
                         {"epochs": 3, "batch_size": 2, "progress": False}, ex, ex, tmp_path / "out", seed=0,
                         checkpoint_dir=tmp_path / "ckpt", device="cpu")
    assert run["steps"] == 1
    cfg = json.loads((tmp_path / "out" / "run.json").read_text())["provenance"]["config"]
    assert cfg["train"]["steps"] == 1 and cfg["train"]["epochs"] is None and cfg["train"]["adam_eps"] == 1e-6
    assert cfg["train_overrides"] == {"steps": 1, "adam_eps": 1e-6}
    # a method's own hyperparameters list an override only where it was given
    assert "grad_clip" not in cfg["params"] and cfg["params"]["steps"] == 1
    plain = build_method("npo", {}).cfg.to_dict()
    assert not {"steps", "epochs", "grad_clip", "adam_eps"} & set(plain)


@pytest.mark.parametrize("params,key", [({"steps": 2, "epochs": 1}, "steps"), ({"adam_eps": None}, "adam_eps"),
                                        ({"adam_eps": 0.0}, "adam_eps"), ({"grad_clip": -1.0}, "grad_clip"),
                                        ({"epochs": None}, "epochs")])
def test_override_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as info:
        build_method("prism", params)
    assert info.value.key == key


def test_config_validation_names_the_method_key():
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    raw["unlearning"]["methods"]["rmu"] = {**raw["unlearning"]["methods"]["rmu"], "adam_eps": 0}
    with pytest.raises(ValueError, match=r"unlearning\.methods\.rmu\.adam_eps"):
        validate_config(raw)
