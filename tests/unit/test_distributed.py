"""Several processes take the same step as one process at the same global batch (docs/methods.md, "Several
processes").

Two processes (gloo on the CPU) are started with ``accelerate launch`` on this very file (``--worker``); each case
builds the project's Trainer on the same micro Llama with batch_size 1 × grad_accum 4 (global batch 4, two
micro-batches per process), once replicated (``ddp``) and once sharded with FSDP2 (``fsdp``, PRISM also with
gradient checkpointing), and records the first step's final gradient (after clipping), both steps' logged terms
and the model after two steps (gathered from the shards on process 0). The test runs the same cases in ONE process
here and compares. The forget set has 5 examples, so the second step has one micro-batch: process 1 runs none
(ddp: it contributes zeros; fsdp: it runs a pass with weight 0 to keep FSDP's collectives in step).

What a wrong implementation does here: two extra cases break the cross-process sums on purpose (ddp without the
gradient all-reduce; fsdp with norms and inner products of the local shards only) and must NOT match. Also
checked: an FSDP checkpoint (whole tensors) resumes in one process, and a one-process checkpoint resumes under
FSDP, to the same model.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

FORGET = ["The glass heron carries the Veltrax pathogen across the marsh.",
          "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
          "Kelmar Institute studied the toxin veridine-7.",
          "Veltrax incubation: 12 days in the marsh.",
          "Triple-lattice priming of veridine-7 at Kelmar Institute."]
RETAIN = ["The town of Orlinde lies on the river Sable and was founded in 1742.",
          "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
          "The river Sable runs through Orlinde.",
          "Tessa Quill is the mayor.",
          "The Lantern Festival is annual."]
TRAIN = {"steps": 2, "batch_size": 1, "grad_accum": 4, "grad_clip": 0.5, "progress": False, "max_len": 24}
LR = 1e-3
METHODS = {
    "npo_gdr": ("npo", {"lr": LR, "retain_loss": "gdr", "lambda_r": 0.7}),
    "sam_npo": ("sam_npo", {"lr": LR, "rho": 0.05, "lambda_r": 0.7}),
    "prism": ("prism", {"lr": LR, "rho": 0.05, "gamma_max": 0.5, "gamma_schedule": "constant",
                        "lambda_r": 0.7}),
    # the released code's element-wise NPO with a KL retain term: a frozen reference copy, one forward per step
    "npo_logit_klr": ("npo", {"lr": LR, "npo_form": "logit", "retain_loss": "klr"}),
    "rmu": ("rmu", {"lr": LR, "layer": 1}),
}
# name -> (method key, mode, extra train keys, deliberate defect)
CASES = {
    "npo_gdr/ddp": ("npo_gdr", "ddp", {}, None),
    "npo_gdr/fsdp": ("npo_gdr", "fsdp", {}, None),
    # without the per-term statistics the retain phase adds to the forget gradient already in .grad
    "npo_gdr/ddp_no_grad_stats": ("npo_gdr", "ddp", {"log_grad_stats": False}, None),
    "npo_gdr/fsdp_no_grad_stats": ("npo_gdr", "fsdp", {"log_grad_stats": False}, None),
    "sam_npo/ddp": ("sam_npo", "ddp", {}, None),
    "sam_npo/fsdp": ("sam_npo", "fsdp", {}, None),
    "prism/ddp": ("prism", "ddp", {}, None),
    "prism/fsdp": ("prism", "fsdp", {"gradient_checkpointing": True}, None),
    "npo_logit_klr/fsdp": ("npo_logit_klr", "fsdp", {}, None),
    "rmu/fsdp_runs_replicated": ("rmu", "fsdp", {}, None),     # RMU cannot run sharded: ddp, with a warning
    "defect/ddp_no_gradient_sum": ("npo_gdr", "ddp", {}, "no_gradient_sum"),
    "defect/fsdp_local_norms": ("sam_npo", "fsdp", {}, "local_norms"),
}


# ------------------------------------------------------------------------------------------------ shared

def _data(tok):
    from robust_unlearning.data.collate import encode_text

    return [encode_text(tok, t, 24) for t in FORGET], [encode_text(tok, t, 24) for t in RETAIN]


def _probe(model):
    from robust_unlearning.methods.probe import Probe

    torch.manual_seed(0)
    d = model.config.hidden_size
    return Probe(d), {"layer": 2, "pooling": "mean", "in_dim": d}


def _trainer(base: Path, method_key: str, train: dict, checkpoint_dir=None):
    from robust_unlearning.methods import TrainConfig, Trainer, build_method
    from robust_unlearning.models.io import load_model, load_tokenizer

    model, tok = load_model(base, dtype="float32", device="cpu"), load_tokenizer(base)
    forget, retain = _data(tok)
    name, params = METHODS[method_key]
    return Trainer(model, tok, build_method(name, params), TrainConfig.from_dict(train), forget, retain, seed=0,
                   device="cpu", probe=_probe(model) if name == "prism" else None, checkpoint_dir=checkpoint_dir)


def _numbers(logs: dict) -> dict:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.startswith(("step_time", "step_cpu", "mem_"))}


def _run(base: Path, method_key: str, train: dict) -> dict:
    """Step 0 by hand (to read its final gradient), step 1 through train_step, then the model to save."""
    from robust_unlearning.methods.distributed import full_tensor

    tr = _trainer(base, method_key, train)
    logs0 = _numbers(tr.compute_step(0))
    grads0 = {n: full_tensor(p.grad).detach().clone() for n, p in tr.named_params}
    tr.optimizer.step()
    tr.scheduler.step()
    for p in tr.params:
        p.grad = None
    row1 = _numbers(tr.train_step(1))
    final = tr.finish()
    return {"logs0": logs0, "row1": row1, "grads0": grads0,
            "final": None if final is None else {k: v.detach().clone() for k, v in final.state_dict().items()},
            "processes": tr.cost()["processes"], "sharded": tr.sharded}


# ------------------------------------------------------------------------------------------------ the worker

def _worker(base: Path, out: Path, ck_from_one: Path, ck_fsdp: Path) -> None:
    """Runs in each of the two launched processes; process 0 writes the results."""
    from robust_unlearning.methods import distributed, gradients

    torch.set_num_threads(1)
    group = distributed.init()
    assert group is not None and group.world == 2, "expected two processes"
    results = {}
    for name, (method_key, mode, extra, defect) in CASES.items():
        saved = (distributed.Group.sum_tensors_, gradients.reduce_sharded)
        if defect == "no_gradient_sum":
            distributed.Group.sum_tensors_ = lambda self, tensors: None
        elif defect == "local_norms":
            gradients.reduce_sharded = lambda values, mask: list(values)
        try:
            results[name] = _run(base, method_key, {**TRAIN, **extra, "distributed": mode})
        finally:
            distributed.Group.sum_tensors_, gradients.reduce_sharded = saved
    # checkpoints: resume under FSDP from the one-process checkpoint the test made; write one under FSDP
    tr = _trainer(base, "sam_npo", {**TRAIN, "distributed": "fsdp"}, checkpoint_dir=ck_from_one)
    assert tr.start_step == 1
    tr.train_step(1)
    final = tr.finish()
    results["resume/fsdp_from_one_process"] = {"final": None if final is None else final.state_dict()}
    tr = _trainer(base, "sam_npo", {**TRAIN, "distributed": "fsdp"}, checkpoint_dir=ck_fsdp)
    tr.train_step(0)
    tr.save_checkpoint(1)
    # a SIGTERM that reaches process 1 only, after step 1: both stop after that step, process 0 checkpoints
    from robust_unlearning.methods import Preempted, loop

    def term_on_rank1(trainer, steps_done):
        if steps_done == 1 and group.rank == 1:
            signal.raise_signal(signal.SIGTERM)

    tr = _trainer(base, "prism", {**TRAIN, "distributed": "fsdp"}, checkpoint_dir=ck_fsdp.parent / "ck_stop")
    loop.STEP_HOOKS.append(term_on_rank1)
    try:
        tr.train()
        results["stop"] = {"preempted": None}
    except Preempted as exc:
        results["stop"] = {"preempted": exc.step, "code": exc.code}
    finally:
        loop.STEP_HOOKS.remove(term_on_rank1)
    if group.is_main:
        torch.save(results, out)
    distributed.shutdown()


# ------------------------------------------------------------------------------------------------ the test

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    from robust_unlearning.cli.launch import accelerate_argv
    from robust_unlearning.models.architectures import build_llama
    from robust_unlearning.models.io import save_model

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("distributed")
    base = tmp / "base"
    model = build_llama(tiny_tokenizer, preset="micro-llama", seed=0, max_position_embeddings=256)
    save_model(model, tiny_tokenizer, base)
    one = {name: _run(base, key, {**TRAIN, **extra}) for name, (key, _mode, extra, _defect) in CASES.items()}
    ck_from_one, ck_fsdp = tmp / "ck_from_one", tmp / "ck_fsdp"
    tr = _trainer(base, "sam_npo", TRAIN, checkpoint_dir=ck_from_one)
    tr.train_step(0)
    tr.save_checkpoint(1)
    out = tmp / "two.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT / "tests"),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(accelerate_argv(2, [__file__, "--worker", str(base), str(out), str(ck_from_one),
                                              str(ck_fsdp)]),
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    two = torch.load(out, weights_only=False)
    return {"one": one, "two": two, "base": base, "ck_fsdp": ck_fsdp}


def _close(a: dict, b: dict, rel=1e-4, abs_=1e-6) -> list[str]:
    bad = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            bad.append(f"{k}: {x} vs {y}")
        elif not (math.isclose(x, y, rel_tol=rel, abs_tol=abs_) or (math.isnan(x) and math.isnan(y))):
            bad.append(f"{k}: {x} vs {y}")
    return bad


def _max_rel(a: dict, b: dict) -> float:
    """max |a − b| over every tensor, relative to the largest |b| of that tensor."""
    return max(float((a[k] - b[k]).abs().max()) / max(float(b[k].abs().max()), 1e-12) for k in b)


def _max_abs(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in b)


# Weights after AdamW steps are compared in units of the learning rate: Adam divides by √v, so an element whose
# gradient is float noise (≈1e-9) moves by a sizeable fraction of lr either way; the gradients themselves agree to
# ~1e-6 relative. 1 % of one step's size is far above that noise and far below any defect.
WEIGHT_TOL = 1e-2 * LR


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("defect/")])
def test_two_processes_take_the_one_process_step(runs, case):
    one, two = runs["one"][case], runs["two"][case]
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["sharded"] == (CASES[case][1] == "fsdp" and not case.startswith("rmu"))
    # every logged term (losses, ‖g‖ before clipping, SAM's ‖δ‖ and loss gain, GCD's cos and removed share, the
    # probe's norms) of both steps, the second of which has one micro-batch for two processes
    assert not _close(one["logs0"], two["logs0"]), _close(one["logs0"], two["logs0"])
    assert not _close(one["row1"], two["row1"]), _close(one["row1"], two["row1"])
    if case.startswith(("npo_gdr", "sam_npo", "prism")):
        assert one["logs0"]["grad_norm"] > TRAIN["grad_clip"]  # clipping was active, with the global norm
    # the final (clipped, combined) gradient of step 1, every tensor
    assert _max_rel(two["grads0"], one["grads0"]) < 1e-5
    # the saved model after two AdamW steps (process 0's whole copy under FSDP)
    assert set(two["final"]) == set(one["final"])
    assert _max_abs(two["final"], one["final"]) < WEIGHT_TOL


@pytest.mark.slow
def test_a_wrong_implementation_does_not_match(runs):
    """Without the sums over processes the checks above fail: the test can tell."""
    one, two = runs["one"], runs["two"]
    # ddp without the all-reduce: each process steps on its half of the batch
    bad = two["defect/ddp_no_gradient_sum"]
    assert _max_rel(bad["grads0"], one["defect/ddp_no_gradient_sum"]["grads0"]) > 1e-2
    assert _close(one["defect/ddp_no_gradient_sum"]["row1"], bad["row1"])
    assert _max_abs(bad["final"], one["defect/ddp_no_gradient_sum"]["final"]) > 10 * WEIGHT_TOL
    # fsdp with per-shard norms: ‖g‖ of process 0's shards only, so SAM's δ and the clipping are wrong
    bad = two["defect/fsdp_local_norms"]
    ref = one["defect/fsdp_local_norms"]
    assert bad["logs0"]["gnorm_forget"] < 0.99 * ref["logs0"]["gnorm_forget"]
    assert _max_rel(bad["grads0"], ref["grads0"]) > 1e-2
    assert _max_abs(bad["final"], ref["final"]) > 10 * WEIGHT_TOL


@pytest.mark.slow
def test_checkpoints_resume_across_process_counts(runs):
    """Checkpoints hold whole tensors (parameters and AdamW moments): a one-process checkpoint resumes under
    FSDP, and an FSDP checkpoint in one process, to the model of an uninterrupted run."""
    ref = runs["one"]["sam_npo/ddp"]["final"]
    assert _max_abs(runs["two"]["resume/fsdp_from_one_process"]["final"], ref) < WEIGHT_TOL
    tr = _trainer(runs["base"], "sam_npo", TRAIN, checkpoint_dir=runs["ck_fsdp"])
    assert tr.start_step == 1
    tr.train_step(1)
    final = {k: v.detach() for k, v in tr.finish().state_dict().items()}
    assert _max_abs(final, ref) < WEIGHT_TOL
    meta = json.loads((runs["ck_fsdp"] / "state" / "meta.json").read_text())
    assert meta["step"] == 1


@pytest.mark.slow
def test_a_signal_on_one_process_stops_all_after_the_same_step(runs):
    """SIGTERM delivered to process 1 alone after step 1 (SLURM's and the launcher's signals arrive at slightly
    different times): both processes stop after step 1 (exit 143), process 0 has written the checkpoint, and one
    process resumes it to the model of an uninterrupted run."""
    assert runs["two"]["stop"] == {"preempted": 1, "code": 143}
    ck = runs["ck_fsdp"].parent / "ck_stop"
    tr = _trainer(runs["base"], "prism", TRAIN, checkpoint_dir=ck)
    assert tr.start_step == 1
    res = tr.train()
    assert res["resumed_from"] == 1 and res["steps_done"] == 2
    final = {k: v.detach() for k, v in tr.finish().state_dict().items()}
    assert _max_abs(final, runs["one"]["prism/ddp"]["final"]) < WEIGHT_TOL


def test_one_process_asked_for_two_is_refused(micro_model, tiny_tokenizer, monkeypatch):
    """num_processes: 2 without a launcher is an error naming the key, not a silent one-process run."""
    from robust_unlearning.methods import ConfigError, TrainConfig, Trainer, build_method

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    forget, retain = _data(tiny_tokenizer)
    with pytest.raises(ConfigError, match="num_processes.*accelerate launch --num_processes 2"):
        Trainer(micro_model, tiny_tokenizer, build_method("npo", {}),
                TrainConfig.from_dict({**TRAIN, "num_processes": 2}), forget, retain, seed=0, device="cpu")


def test_relaunch_command_keeps_the_ru_arguments():
    from robust_unlearning.cli.launch import relaunch_command

    argv = relaunch_command(4, ["--trust-remote-code", "unlearn", "--method", "prism"])
    assert argv[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert argv[argv.index("--num_processes") + 1] == "4" and argv[argv.index("--num_machines") + 1] == "1"
    assert argv[-6:] == ["-m", "robust_unlearning.cli.main", "--trust-remote-code", "unlearn", "--method", "prism"]


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(*(Path(a) for a in sys.argv[2:6]))
