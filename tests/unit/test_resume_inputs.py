"""Resume cannot mix runs: a checkpoint records the model it started from (its weights manifest) and PRISM's
probe, so a rebuilt base model starts again from step 0 instead of resuming stale state; the relearn attack
checkpoints and resumes like an unlearning job (methods/resume.py, attacks/relearn.py)."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import test_attacks_support as S  # noqa: E402
from test_methods_resume import hooks, sigterm_at  # noqa: E402,F401  (the SIGTERM-at-step fixture and hook)

from robust_unlearning.attacks.relearn import Relearn  # noqa: E402
from robust_unlearning.data.collate import encode_text  # noqa: E402
from robust_unlearning.methods import Preempted, run_unlearning  # noqa: E402
from robust_unlearning.methods.resume import dir_sha256, input_fingerprint  # noqa: E402
from robust_unlearning.models.io import load_model, save_model  # noqa: E402

torch.set_num_threads(1)

TEXTS = ["The glass heron carries the Veltrax pathogen across the marsh.",
         "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
         "Kelmar Institute studied the toxin veridine-7.",
         "The town of Orlinde lies on the river Sable and was founded in 1742.",
         "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde."]


def _unlearn(model_dir, tok, tmp, name, ck):
    forget = [encode_text(tok, t, 20) for t in TEXTS[:3]] * 2
    retain = [encode_text(tok, t, 20) for t in TEXTS[3:]]
    return run_unlearning(load_model(model_dir), tok, "npo", {"lr": 1e-3},
                          {"steps": 6, "batch_size": 2, "progress": False}, forget, retain,
                          tmp / name, 0, ck, device="cpu")


def _perturbed(model, scale=0.01):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale)
    return other


def test_fingerprint_names_the_models_manifest_and_the_probe(micro_model, tiny_tokenizer, tmp_path):
    save_model(micro_model, tiny_tokenizer, tmp_path / "a")
    save_model(_perturbed(micro_model), tiny_tokenizer, tmp_path / "b")
    fa, fb = (input_fingerprint(load_model(tmp_path / x)) for x in "ab")
    assert fa["model_sha256"].startswith("manifest:") and fa["model_sha256"] != fb["model_sha256"]
    assert fa == input_fingerprint(load_model(tmp_path / "a")) and fa["probe_sha256"] is None
    # in memory (no manifest): the weights themselves
    assert input_fingerprint(micro_model)["model_sha256"] == input_fingerprint(copy.deepcopy(micro_model))["model_sha256"]
    assert input_fingerprint(micro_model)["model_sha256"] != input_fingerprint(_perturbed(micro_model))["model_sha256"]
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.json").write_text('{"layer": 1}')
    h1 = input_fingerprint(micro_model, probe)["probe_sha256"]
    assert h1 == dir_sha256(probe) and h1 is not None
    (probe / "probe.json").write_text('{"layer": 2}')   # a retrained probe
    assert input_fingerprint(micro_model, probe)["probe_sha256"] != h1


def test_rebuilt_base_model_does_not_resume_a_stale_checkpoint(micro_model, tiny_tokenizer, tmp_path, hooks, capfd):
    base = tmp_path / "models" / "base"
    save_model(micro_model, tiny_tokenizer, base)
    ck = tmp_path / "ck"
    hooks.append(sigterm_at(3))
    with pytest.raises(Preempted):
        _unlearn(base, tiny_tokenizer, tmp_path, "cut", ck)
    hooks.clear()
    assert (ck / "state" / "state.pt").is_file()

    # the same base model resumes (control: the checkpoint is usable) ...
    same = _unlearn(base, tiny_tokenizer, tmp_path, "same", tmp_path / "ck_same_src")
    assert same["resumed_from"] is None
    hooks.append(sigterm_at(3))
    with pytest.raises(Preempted):
        _unlearn(base, tiny_tokenizer, tmp_path, "cut2", tmp_path / "ck2")
    hooks.clear()
    assert _unlearn(base, tiny_tokenizer, tmp_path, "cut2", tmp_path / "ck2")["resumed_from"] == 3

    # ... a rebuilt one (other weights, same path) starts from step 0 and ends where a fresh run ends
    save_model(_perturbed(micro_model), tiny_tokenizer, base)
    capfd.readouterr()
    res = _unlearn(base, tiny_tokenizer, tmp_path, "cut", ck)
    assert res["resumed_from"] is None and res["steps"] == 6
    assert "checkpoint made from other inputs" in capfd.readouterr().err
    fresh = _unlearn(base, tiny_tokenizer, tmp_path, "fresh", tmp_path / "ck_fresh")
    a = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and fresh["resumed_from"] is None


def test_relearn_checkpoints_and_resumes(micro_model, tiny_tokenizer, tmp_path, hooks, monkeypatch):
    S.install_fallbacks(monkeypatch)
    S.patch_unlearning_sets(monkeypatch)
    src = S.save_tiny(micro_model, tiny_tokenizer, tmp_path / "unlearned")
    settings = {"steps": 6, "lr": 3e-3, "batch_size": 2}
    Relearn.prepare(src, S.FakeBench(), settings, tmp_path / "full", seed=0, device="cpu")

    ck = tmp_path / "ck"
    hooks.append(sigterm_at(3))
    with pytest.raises(Preempted):
        Relearn.prepare(src, S.FakeBench(), settings, tmp_path / "cut", seed=0, device="cpu", checkpoint_dir=ck)
    hooks.clear()
    assert (ck / "state" / "state.pt").is_file() and not (tmp_path / "cut" / "model").exists()
    doc = Relearn.prepare(src, S.FakeBench(), settings, tmp_path / "cut", seed=0, device="cpu", checkpoint_dir=ck)
    assert doc["result"]["finetune"]["steps"] == 6 and not (ck / "state").exists()
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a rebuilt unlearned model does not resume the relearning state of the old one
    hooks.append(sigterm_at(3))
    with pytest.raises(Preempted):
        Relearn.prepare(src, S.FakeBench(), settings, tmp_path / "x", seed=0, device="cpu", checkpoint_dir=ck)
    hooks.clear()
    S.save_tiny(_perturbed(micro_model), tiny_tokenizer, src)
    Relearn.prepare(src, S.FakeBench(), settings, tmp_path / "x", seed=0, device="cpu", checkpoint_dir=ck)
    Relearn.prepare(src, S.FakeBench(), settings, tmp_path / "y", seed=0, device="cpu")
    a = load_file(str(tmp_path / "x" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "y" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
