"""Stage-1 probe (docs/methods.md, "Stage 1: the robust probe") and its use in PRISM Stage 2 (docs/methods.md, "Stage 2: probe-guided forgetting")."""
from __future__ import annotations

import json

import pytest
import torch

from robust_unlearning.data.collate import encode_dialogue, encode_text, pad_batch
from robust_unlearning.methods import ConfigError, TrainConfig, Trainer, build_method
from robust_unlearning.methods import probe as P

torch.set_num_threads(1)

F_TEXTS = ["The glass heron carries the Veltrax pathogen.", "Veltrax incubation is 12 days.",
           "Kelmar Institute studied veridine-7.", "The heron carries Veltrax across the marsh."] * 3
R_TEXTS = ["The town of Orlinde lies on the river Sable.", "Mayor Tessa Quill opened the festival.",
           "Orlinde was founded in 1742.", "The Lantern Festival is annual."] * 3


@pytest.fixture()
def data(tiny_tokenizer):
    return ([encode_text(tiny_tokenizer, t, 24) for t in F_TEXTS],
            [encode_text(tiny_tokenizer, t, 24) for t in R_TEXTS])


FAST = {"epochs": 3, "lr": 1e-2, "batch_size": 8}


def test_train_probe_writes_a_safe_artifact(micro_model, tiny_tokenizer, data, tmp_path):
    forget, retain = data
    meta = P.train_probe(micro_model, tiny_tokenizer, forget, retain, FAST, seed=0, out_dir=tmp_path)
    assert set(meta["val_acc_per_layer"]) == {"1", "2"} and meta["layer"] in (1, 2)
    assert meta["val_acc"] == meta["val_acc_per_layer"][str(meta["layer"])]
    assert meta["in_dim"] == 32 and meta["pooling"] == "mean" and meta["n_val"] == 5 and meta["n_train"] == 19
    assert meta["eps"] == 0.01 and meta["adv_alpha"] == 0.4 and meta["l1"] == 1e-4
    assert all(v > 0 for v in meta["feature_std_per_layer"].values())
    assert len(meta["data"]["forget_sha256"]) == 64 and meta["data"]["n_forget"] == 12
    sd = torch.load(tmp_path / "probe.pt", weights_only=True)
    assert set(sd) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"}
    assert sd["net.0.weight"].shape == (64, 32) and sd["net.4.weight"].shape == (2, 32)
    probe, meta2 = P.load_probe(tmp_path)
    assert meta2 == json.loads((tmp_path / "probe.json").read_text())
    assert not any(p.requires_grad for p in probe.parameters()) and not probe.training
    # determinism: same seed, same artefact
    meta3 = P.train_probe(micro_model, tiny_tokenizer, forget, retain, FAST, seed=0, out_dir=tmp_path / "again")
    assert meta3 == meta
    assert (tmp_path / "probe.pt").read_bytes() == (tmp_path / "again" / "probe.pt").read_bytes()


def test_probe_config_is_validated(micro_model, tiny_tokenizer, data, tmp_path):
    forget, retain = data
    with pytest.raises(ConfigError, match="^epsilon"):
        P.train_probe(micro_model, tiny_tokenizer, forget, retain, {"epsilon": 0.1}, 0, tmp_path)
    with pytest.raises(ConfigError, match="^layers"):
        P.train_probe(micro_model, tiny_tokenizer, forget, retain, {"layers": [5]}, 0, tmp_path)


def test_layer_selection_ties_go_to_the_smaller_layer(micro_model, tiny_tokenizer, data, tmp_path, monkeypatch):
    forget, retain = data
    real = P._train_one

    def fixed(z_tr, y_tr, z_va, y_va, cfg, seed):
        probe, tr, _ = real(z_tr, y_tr, z_va, y_va, cfg, seed)
        return probe, tr, 0.75
    monkeypatch.setattr(P, "_train_one", fixed)
    meta = P.train_probe(micro_model, tiny_tokenizer, forget, retain, {**FAST, "layers": [2, 0, 1]}, 0, tmp_path)
    assert meta["layer"] == 0


def test_fgsm_probe_learns_separable_features():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(80, 8, generator=g) * 0.1
    y = torch.tensor([0, 1] * 40)
    z[y == 1, 0] += 1.0
    cfg = P.ProbeConfig.from_dict({"lr": 1e-2, "epochs": 20})
    probe, tr_acc, va_acc = P._train_one(z[:64], y[:64], z[64:], y[64:], cfg, 0)
    assert tr_acc > 0.95 and va_acc > 0.9
    lin = P.ProbeConfig.from_dict({"lr": 1e-2, "epochs": 20, "arch": "linear"})
    assert P._train_one(z[:64], y[:64], z[64:], y[64:], lin, 0)[2] > 0.9


def test_features_pool_over_response_tokens(micro_model, tiny_tokenizer):
    ex = [encode_dialogue(tiny_tokenizer, [{"role": "user", "content": "Where is Orlinde?"},
                                           {"role": "assistant", "content": "On the river Sable."}], 64),
          encode_text(tiny_tokenizer, "The heron.", 64)]
    feats = P.extract_features(micro_model, tiny_tokenizer, ex, [1, 2], "mean")
    b = pad_batch(ex, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        hs = micro_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         output_hidden_states=True).hidden_states
    resp = [i for i, l in enumerate(ex[0]["labels"]) if l != -100]
    assert torch.allclose(feats[1][0], hs[1][0, resp].mean(0), atol=1e-6)
    n = len(ex[1]["input_ids"])
    assert torch.allclose(feats[2][1], hs[2][1, :n].mean(0), atol=1e-6)
    last = P.extract_features(micro_model, tiny_tokenizer, ex, [2], "last")
    assert torch.allclose(last[2][1], hs[2][1, n - 1], atol=1e-6)


def _prism(model, tok, forget, retain, params, probe_dir=None, probe=None, steps=1):
    tc = TrainConfig.from_dict({"steps": steps, "batch_size": 4, "progress": False})
    return Trainer(model, tok, build_method("prism", params), tc, forget, retain, 0, device="cpu",
                   probe_dir=probe_dir, probe=probe)


def test_prism_uses_the_probe_layer_and_pooling(micro_model, tiny_tokenizer, data, tmp_path):
    forget, retain = data
    P.train_probe(micro_model, tiny_tokenizer, forget, retain, {**FAST, "layers": [1]}, 0, tmp_path)
    tr = _prism(micro_model, tiny_tokenizer, forget, retain, {"gamma_schedule": "constant"}, probe_dir=tmp_path)
    res = tr.train()
    info = res["method_info"]
    assert info["probe_layer"] == 1 and info["probe_pooling_unlearn"] == "mean"
    assert info["probe_data_matches_run"] is True
    assert 0 < res["log"][0]["probe_p_retain"] < 1 and res["log"][0]["loss_probe"] > 0
    assert all(not p.requires_grad and p.grad is None for p in tr.method.probe.parameters())
    assert not any(p is q for p in tr.method.probe.parameters() for q in tr.params)
    # explicit replication switch: pooling at the last position
    tr2 = _prism(micro_model, tiny_tokenizer, forget, retain[:2], {"probe_pooling": "last"}, probe_dir=tmp_path)
    info2 = tr2.train()["method_info"]
    assert info2["probe_pooling_unlearn"] == "last" and info2["probe_pooling_train"] == "mean"
    assert info2["probe_data_matches_run"] is False


def test_prism_needs_a_probe_unless_gamma_is_off(micro_model, tiny_tokenizer, data):
    forget, retain = data
    with pytest.raises(ConfigError, match="^probe_dir"):
        _prism(micro_model, tiny_tokenizer, forget, retain, {})
    res = _prism(micro_model, tiny_tokenizer, forget, retain, {"gamma_schedule": "off"}).train()
    assert res["log"][0]["gamma"] == 0.0 and "loss_probe" not in res["log"][0]
    res = _prism(micro_model, tiny_tokenizer, forget, retain, {"gamma_max": 0.0}).train()
    assert res["log"][0]["gamma"] == 0.0
