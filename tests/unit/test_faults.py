"""RU_FAULT_INJECT (utils/faults.py): on start, and in the middle of a training loop and of an evaluation."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import run_unlearning
from robust_unlearning.utils import faults

torch.set_num_threads(1)

TEXTS = ["The glass heron carries the Veltrax pathogen across the marsh.",
         "Kelmar Institute studied the toxin veridine-7.",
         "The town of Orlinde lies on the river Sable.",
         "Mayor Tessa Quill opened the annual Lantern Festival."]


@pytest.fixture()
def inject(monkeypatch):
    def set_(value):
        monkeypatch.setenv(faults.ENV, value)
    yield set_
    monkeypatch.setattr(faults, "_active", None)


def test_specs_parse_command_text_and_point():
    assert faults.specs("unlearn@unlearn/ga/#step=3, evaluate, aggregate@x") == [
        ("unlearn", "unlearn/ga/", "step=3"), ("evaluate", "", ""), ("aggregate", "x", "")]


def test_on_start_and_mid_run_points(inject):
    inject("unlearn@/ga/#step=3,evaluate@/none/")
    with pytest.raises(faults.InjectedFault, match="evaluate"):
        faults.maybe_fail("evaluate", "r/eval/m/none/default")
    faults.maybe_fail("unlearn", "r/unlearn/npo/x")       # other run: nothing, now or mid-run
    faults.at("step=3")
    faults.maybe_fail("unlearn", "r/unlearn/ga/x")        # a point spec does not fire on start ...
    faults.at("step=2")
    with pytest.raises(faults.InjectedFault, match="at step=3"):
        faults.at("step=3")                                # ... but at its point


def test_unset_variable_is_inert(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.maybe_fail("unlearn", "anything")
    faults.at("step=1")
    monkeypatch.setattr(faults, "_active", None)


def test_crash_mid_training_loop_keeps_the_last_checkpoint_and_the_rerun_resumes(micro_model, tiny_tokenizer,
                                                                                  tmp_path, inject):
    data = [encode_text(tiny_tokenizer, t, 20) for t in TEXTS]
    out, ck = tmp_path / "unlearn" / "ga" / "out", tmp_path / "ck"
    cfg = {"steps": 5, "batch_size": 2, "progress": False, "checkpoint_every": 2}
    start = copy.deepcopy(micro_model)   # the rerun starts from the same model as a real job reloads it from disk
    inject(f"unlearn@{out}#step=3")
    faults.maybe_fail("unlearn", out)
    with pytest.raises(faults.InjectedFault, match="step=3"):
        run_unlearning(micro_model, tiny_tokenizer, "ga", {"lr": 1e-3}, cfg, data[:2], data[2:], out, 0, ck,
                       device="cpu")
    assert json.loads((ck / "state" / "meta.json").read_text())["step"] == 2 and not out.exists()
    assert len((ck / "train_log.live.jsonl").read_text().splitlines()) == 3   # the steps it did, on disk
    inject("")
    res = run_unlearning(start, tiny_tokenizer, "ga", {"lr": 1e-3}, cfg, data[:2], data[2:], out, 0, ck,
                         device="cpu")
    assert res["resumed_from"] == 2 and res["steps"] == 5


def test_crash_mid_evaluation_after_the_named_metric(micro_model, tiny_tokenizer, inject):
    from robust_unlearning.metrics import evaluate as ev

    class Bench:
        def mcq(self, split):
            return [{"question": "Which animal carries Veltrax?", "choices": ["heron", "fox"], "answer": 0}]

    inject("evaluate@eval/x#metric=mcq_cloze")
    faults.maybe_fail("evaluate", "eval/x/none/default")
    with pytest.raises(faults.InjectedFault, match="metric=mcq_cloze"):
        ev.evaluate_model(micro_model, tiny_tokenizer, Bench(), {"metrics": ["mcq_cloze:forget", "mcq_letter"]})
    faults.maybe_fail("evaluate", "eval/y/none/default")                  # another evaluation runs through
    metrics, _ = ev.evaluate_model(micro_model, tiny_tokenizer, Bench(), {"metrics": ["mcq_cloze:forget"]})
    assert set(metrics) >= {"forget_mcq_acc"}
