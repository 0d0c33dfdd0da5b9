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
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen = []

    def mine(signum, frame):          # the handler in force before the run: it must not be the one that runs
        seen.append(signum)
    try:
        signal.signal(signal.SIGTERM, mine)
        signal.signal(signal.SIGINT, mine)
        with pytest.raises(Preempted) as exc:
            run(copy.deepcopy(base), tiny_tokenizer, data, tmp_path, "cut", method, params, **tc)
        # the loop's own handler took the signal during the run, and ours is back in force after it
        assert seen == [] and signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert exc.value.code == 143 and exc.value.step == 3
    ck = tmp_path / "cut" / "ck"
    assert (ck / "state" / "state.pt").is_file() and not (tmp_path / "cut" / "out").exists()
    assert len(json.loads((ck / "state" / "meta.json").read_text())["fingerprint"]) > 0
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


_CHILD = r'''
import json, os, signal, sys
import torch
sys.path.insert(0, sys.argv[1])                      # tests/: the session fixtures' corpus
from conftest import _CORPUS
from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import loop, run_unlearning
from robust_unlearning.models.architectures import build_llama
from robust_unlearning.models.tokenizer import train_bpe_tokenizer

torch.set_num_threads(1)
out, ck, kill_after = sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = train_bpe_tokenizer(_CORPUS, vocab_size=400, min_frequency=1)
model = build_llama(tok, preset="micro-llama", seed=0, max_position_embeddings=256)
texts = json.loads(sys.argv[5])
forget = [encode_text(tok, t, 20) for t in texts[:3]] * 2
retain = [encode_text(tok, t, 20) for t in texts[3:]]
if kill_after:
    def hook(trainer, done):
        if done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)   # no handler, no finally, no atexit: the process just ends
    loop.STEP_HOOKS.append(hook)
res = run_unlearning(model, tok, "npo", {"lr": 1e-3}, {"steps": 6, "batch_size": 2, "progress": False,
                     "checkpoint_every": 2}, forget, retain, out, 0, ck, device="cpu")
print(json.dumps({"resumed_from": res["resumed_from"], "steps": res["steps"]}))
'''


@pytest.mark.slow
def test_sigkill_between_periodic_checkpoints_resumes_from_the_last_one(micro_model, tiny_tokenizer, data, tmp_path):
    """A real SIGKILL of the training process after step 3 (checkpoints every 2 steps): nothing of the loop's
    cleanup runs. The rerun must resume from step 2, not step 0, and end bit-identical to an uninterrupted run."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1])
    child = tmp_path / "child.py"
    child.write_text(_CHILD)

    def go(name, kill_after):
        return subprocess.run([sys.executable, str(child), tests, str(tmp_path / name / "out"),
                               str(tmp_path / name / "ck"), str(kill_after), json.dumps(TEXTS)],
                              capture_output=True, text=True, timeout=600)

    # the uninterrupted reference in this process: same tokenizer, model, data and settings as the child's
    run(micro_model, tiny_tokenizer, data, tmp_path, "full", "npo", checkpoint_every=2)
    killed = go("cut", 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ck = tmp_path / "cut" / "ck"
    assert json.loads((ck / "state" / "meta.json").read_text())["step"] == 2
    assert not (tmp_path / "cut" / "out").exists()
    resumed = go("cut", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {"resumed_from": 2, "steps": 6}
    assert_same(weights(tmp_path / "full" / "out"), weights(tmp_path / "cut" / "out"))
    log_a = [json.loads(line) for line in (tmp_path / "full" / "out" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "cut" / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log_a] and len(log_b) == 6
