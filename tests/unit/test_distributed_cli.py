"""`ru unlearn` and the relearning attack as several processes, the way the rules start them (docs/methods.md,
"Several processes"; docs/cluster.md, "GPUs"). The one-process references run in this process, through the same
library calls as `ru unlearn` / `ru attack`.

With ``unlearning.train.num_processes: 2`` in ``--train`` (relearning: ``$RU_TRAIN_PROCESSES=2``, which the workflow
sets from the same key) the job relaunches itself under ``accelerate launch`` (two processes, gloo on this CPU),
process 0 alone writes the run folder, and the model, the training log and run.json's cost agree with the same
job run as one process.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

RU = str(Path(sys.executable).parent / "ru")
LR = 1e-3
WEIGHT_TOL = 1e-2 * LR   # weights after AdamW steps, in units of lr (see test_distributed.py)
SETTINGS = {"lr": LR, "rho": 0.05}
BENCHMARK = {"forget_source": "raw", "retain_source": "raw"}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RU_TRAIN_PROCESSES", "RU_DISTRIBUTED",
                                                            "RU_WARM_SOCKET")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", **extra}


def _ru(args, log: Path, **env) -> str:
    with open(log, "w") as fh:
        res = subprocess.run([RU, *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(**env), timeout=900)
    text = log.read_text()
    assert res.returncode == 0, text[-6000:]
    return text


def _weights(folder: Path) -> dict:
    return {k: v.float() for k, v in load_file(str(next(folder.glob("*.safetensors")))).items()}


def _max_abs(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_ru_unlearn_and_relearn_as_two_processes_match_one(tmp_path, micro_model, tiny_tokenizer):
    from robust_unlearning.attacks.relearn import Relearn
    from robust_unlearning.data.formats import Benchmark
    from robust_unlearning.data.synthetic import generate_world
    from robust_unlearning.data.unlearning_sets import build_run_examples
    from robust_unlearning.methods import run_unlearning
    from robust_unlearning.models.io import load_model, load_tokenizer, save_model

    generate_world(tmp_path / "data", seed=0, size="tiny")
    base = tmp_path / "base"
    save_model(micro_model, tiny_tokenizer, base)
    train = {"steps": 2, "batch_size": 1, "grad_accum": 4, "max_len": 32, "progress": False}

    def unlearn(out: str, train_cfg: dict) -> list[str]:
        return ["unlearn", "--method", "sam_npo", "--settings", json.dumps(SETTINGS),
                "--train", json.dumps(train_cfg), "--benchmark", json.dumps(BENCHMARK),
                "--data", str(tmp_path / "data"), "--model-dir", str(base), "--seed", "0",
                "--out", str(tmp_path / out), "--checkpoint-dir", str(tmp_path / f"ck_{out}"), "--threads", "1"]

    # the one-process reference in this process, as cmd_unlearn runs it (a third `ru` start would cost ~10 s)
    bench = Benchmark(tmp_path / "data")
    model, tok = load_model(base), load_tokenizer(base)
    forget, retain = build_run_examples(bench, tok, BENCHMARK, train["max_len"])
    run_unlearning(model, tok, "sam_npo", SETTINGS, train, forget, retain, tmp_path / "one", 0,
                   checkpoint_dir=tmp_path / "ck_one")
    log = _ru(unlearn("two", {**train, "num_processes": 2, "distributed": "fsdp"}), tmp_path / "two.log")
    assert "ru: 2 processes (fsdp): python -m accelerate.commands.launch --multi_gpu --num_processes 2" in log
    one, two = tmp_path / "one", tmp_path / "two"
    assert _max_abs(_weights(two / "model"), _weights(one / "model")) < WEIGHT_TOL
    rows1, rows2 = ([json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (one, two))
    assert len(rows1) == len(rows2) == 2
    for r1, r2 in zip(rows1, rows2):
        for k in ("loss", "loss_forget", "loss_retain", "grad_norm", "gnorm_forget", "sam_loss_gain", "cos_fr"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-7), k
    run1, run2 = (json.loads((d / "run.json").read_text()) for d in (one, two))
    assert run1["cost"]["processes"] == 1 and "distributed" not in run1["cost"]
    assert run2["cost"]["processes"] == 2 and run2["cost"]["distributed"] == "fsdp"
    # passes over both processes: the same work as one process (2 steps × 4 micro-batches × 3 SAM passes)
    assert run2["cost"]["passes"]["policy_backward"] == run1["cost"]["passes"]["policy_backward"] == 24
    assert run2["provenance"]["config"]["train"]["num_processes"] == 2
    assert not (tmp_path / "ck_two" / "state").exists()        # cleared by process 0 after the outputs

    # relearning on the unlearned model: the attack splits its batch of 4 into one micro-batch per process
    settings = json.dumps({"steps": 2, "lr": LR, "batch_size": 4, "max_len": 32})

    def relearn(out: str) -> list[str]:
        return ["attack", "--attack", "relearn", "--settings", settings, "--data", str(tmp_path / "data"),
                "--model-dir", str(one / "model"), "--seed", "0", "--out", str(tmp_path / out),
                "--checkpoint-dir", str(tmp_path / f"ck_{out}"), "--threads", "1", "--dtype", "float32"]

    Relearn.prepare(one / "model", bench, json.loads(settings), tmp_path / "rl_one", seed=0, device="cpu",
                    checkpoint_dir=tmp_path / "ck_rl_one")
    log = _ru(relearn("rl_two"), tmp_path / "rl_two.log", RU_TRAIN_PROCESSES="2", RU_DISTRIBUTED="ddp")
    assert "ru: 2 processes (ddp):" in log
    assert _max_abs(_weights(tmp_path / "rl_two" / "model"), _weights(tmp_path / "rl_one" / "model")) < WEIGHT_TOL
    a1, a2 = (json.loads((tmp_path / d / "attack.json").read_text()) for d in ("rl_one", "rl_two"))
    ft1, ft2 = a1["result"]["finetune"], a2["result"]["finetune"]
    assert ft2["losses"] == pytest.approx(ft1["losses"], rel=1e-5)
    assert ft2["cost"]["processes"] == 2 and ft2["cost"]["grad_accum"] == 2 and ft2["cost"]["per_device_batch"] == 2
    assert torch.equal(torch.tensor(ft1["cost"]["effective_batch"]), torch.tensor(ft2["cost"]["effective_batch"]))


@pytest.mark.slow
def test_gpu_check_runs_sharded_as_two_processes(tmp_path):
    """The prepared GPU check's several-GPU case (docs/cluster.md, "The prepared GPU check"), on this CPU: two
    processes, PRISM sharded with FSDP under gradient checkpointing, one summary written by process 0."""
    from robust_unlearning.cli.launch import accelerate_argv

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(accelerate_argv(2, [str(root / "workflow" / "scripts" / "gpu_check.py"), "--smoke",
                                              "--methods", "NPO+GDR,PRISM", "--out", str(out)]),
                          env=_env(PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["processes"] == 2 and summary["distributed"] == "fsdp" and summary["eval"] is None
    assert [r["method"] for r in summary["train"]] == ["NPO+GDR", "PRISM"]     # no LoRA row with several
    for r in summary["train"]:
        assert r["processes"] == 2 and r["distributed"] == "fsdp" and r["s_per_step"] > 0 and r["peak_mem_mb"] > 0
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    assert proc.stdout.count("| PRISM |") == 1                                 # one table, from process 0
