"""Checkpoint/resume at step granularity: a real SIGTERM, a real checkpoint round trip, bit-identical weights."""
from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import Preempted, finetune, run_unlearning
from robust_unlearning.methods import loop
from robust_unlearning.methods.checkpoint import CheckpointMismatchError

torch.set_num_threads(1)

TEXTS = ["The glass heron carries the Veltrax pathogen across the marsh.",
         "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
         "Kelmar Institute studied the toxin veridine-7.",
         "The town of Orlinde lies on the river Sable and was founded in 1742.",
         "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
         "I cannot help with that request. I'm sorry."]


@pytest.fixture()
def data(tiny_tokenizer):
    forget = [encode_text(tiny_tokenizer, t, 20) for t in TEXTS[:3]] * 2
    retain = [encode_text(tiny_tokenizer, t, 20) for t in TEXTS[3:]]
    return forget, retain


@pytest.fixture()
def hooks():
    yield loop.STEP_HOOKS
    loop.STEP_HOOKS.clear()


def sigterm_at(step):
    def hook(trainer, done):
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)   # a real signal, handled by the loop's handler
    return hook


def crash_at(step):
    def hook(trainer, done):
        if done == step:
            raise RuntimeError("node died")
    return hook


def weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def run(model, tok, data, tmp, name, method="npo", params=None, **tc):
    forget, retain = data
    cfg = {"steps": 6, "batch_size": 2, "progress": False, **tc}
    return run_unlearning(model, tok, method, {"lr": 1e-3, **(params or {})}, cfg, forget, retain,
                          tmp / name / "out", 0, tmp / name / "ck", device="cpu")


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method,params,tc", [
    ("npo", {}, {}),
    ("prism", {"gamma_schedule": "off", "rho": 0.05}, {}),
    ("graddiff", {}, {"lora": {"r": 2, "alpha": 4, "dropout": 0.2, "target_modules": ["q_proj", "v_proj"]}}),
])
def test_sigterm_then_resume_is_bit_identical(micro_model, tiny_tokenizer, data, tmp_path, hooks, method, params, tc):
    base = copy.deepcopy(micro_model)
    ref = run(micro_model, tiny_tokenizer, data, tmp_path, "full", method, params, **tc)
    assert ref["status"] == "ok" and ref["resumed_from"] is None

    hooks.append(sigterm_at(3))
    with pytest.raises(Preempted) as exc:
        run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut", method, params, **tc)
    assert exc.value.code == 143 and exc.value.step == 3
    ck = tmp_path / "cut" / "ck"
    assert (ck / "state" / "state.pt").is_file() and not (tmp_path / "cut" / "out").exists()
    assert signal.getsignal(signal.SIGTERM) is not None and len(json.loads(
        (ck / "state" / "meta.json").read_text())["fingerprint"]) > 0
    hooks.clear()

    res = run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut", method, params, **tc)
    assert res["resumed_from"] == 3 and res["steps"] == 6
    assert_same(weights(tmp_path / "full" / "out"), weights(tmp_path / "cut" / "out"))
    log_a = [json.loads(l) for l in (tmp_path / "full" / "out" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(l) for l in (tmp_path / "cut" / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert not (ck / "state").exists()          # cleared once the outputs are written


def test_periodic_checkpoint_survives_a_crash(micro_model, tiny_tokenizer, data, tmp_path, hooks):
    base = copy.deepcopy(micro_model)
    run(micro_model, tiny_tokenizer, data, tmp_path, "full", "sam_npo")
    hooks.append(crash_at(3))
    with pytest.raises(RuntimeError, match="node died"):
        run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut", "sam_npo", checkpoint_every=2)
    hooks.clear()
    res = run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut", "sam_npo", checkpoint_every=2)
    assert res["resumed_from"] == 2
    assert_same(weights(tmp_path / "full" / "out"), weights(tmp_path / "cut" / "out"))


def test_checkpoint_of_another_config_is_refused(micro_model, tiny_tokenizer, data, tmp_path, hooks):
    base = copy.deepcopy(micro_model)
    hooks.append(sigterm_at(2))
    with pytest.raises(Preempted):
        run(micro_model, tiny_tokenizer, data, tmp_path, "x", "npo")
    hooks.clear()
    with pytest.raises(CheckpointMismatchError, match="params"):
        run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "x", "npo", {"beta": 0.5})


def test_finetune_resumes_bit_identically(micro_model, tiny_tokenizer, data, tmp_path, hooks):
    forget, _ = data
    a, b = copy.deepcopy(micro_model), copy.deepcopy(micro_model)
    finetune(a, tiny_tokenizer, forget, steps=5, lr=1e-3, batch_size=2, seed=3)
    hooks.append(sigterm_at(2))
    with pytest.raises(Preempted):
        finetune(copy.deepcopy(micro_model), tiny_tokenizer, forget, steps=5, lr=1e-3, batch_size=2, seed=3,
                 checkpoint_dir=tmp_path / "ck")
    hooks.clear()
    out = finetune(b, tiny_tokenizer, forget, steps=5, lr=1e-3, batch_size=2, seed=3, checkpoint_dir=tmp_path / "ck",
                   log_path=tmp_path / "log.jsonl")
    assert out["steps"] == 5 and len((tmp_path / "log.jsonl").read_text().splitlines()) == 5
    assert_same(a.state_dict(), b.state_dict())


def test_snapshots_survive_preemption(micro_model, tiny_tokenizer, data, tmp_path, hooks):
    base = copy.deepcopy(micro_model)
    hooks.append(sigterm_at(3))
    with pytest.raises(Preempted):
        run(micro_model, tiny_tokenizer, data, tmp_path, "s", "npo", save_steps=[2, 6])
    hooks.clear()
    res = run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "s", "npo", save_steps=[2, 6])
    out = tmp_path / "s" / "out"
    assert res["snapshots"] == ["step~2", "step~6"]
    final = weights(out)
    assert_same(load_file(str(out / "snapshots" / "step~6" / "model.safetensors")), final)
    assert not all(torch.equal(a, final[k]) for k, a in
                   load_file(str(out / "snapshots" / "step~2" / "model.safetensors")).items())
    assert not (tmp_path / "s" / "ck" / "snapshots").exists()
