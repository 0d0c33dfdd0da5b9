"""Faults injected into real Snakemake runs of (variants of) the miniature config.

- SIGKILL of the whole snakemake process group in the middle of an unlearning job, then --unlock and
  --rerun-incomplete: the grid completes, no finished job runs again, the tables equal the uninterrupted run's.
- SIGTERM of one unlearning job (what SLURM sends at a time limit): it checkpoints, the rerun resumes from the
  step it reached, and the final weights are bit-identical to the uninterrupted run's.
- Jobs that fail half-way (RU_FAULT_INJECT ...#step=3 / #metric=knowmem) under --keep-going: nothing partial is
  left as an output, the checkpoint survives, independent branches finish; `--config allow_missing=true`
  aggregates and marks the missing cells; a later normal run recomputes only the failed jobs, resuming the
  unlearning job from its last checkpoint.
- A diverging run (a real NaN from a huge learning rate): the default fails naming method, step and loss term;
  ``on_divergence: record`` writes a ``diverged`` status that the tables show.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pandas as pd
import pytest

import relkit
from relkit import BENCH, GA, MINI_METHODS, NPO, RELEARN_ONE

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


# ------------------------------------------------------------------------------------------------ SIGKILL
def test_sigkill_mid_unlearning_then_unlock_and_rerun_incomplete(killed_run, reference_run):
    """The run is killed (conftest.killed_run) after an evaluation job finished, while the unlearning job is
    mid-way; the whole process group dies, the lock stays behind."""
    k = killed_run
    assert k.kill_returncode == -signal.SIGKILL
    assert k.killed_job.startswith("unlearn/") and k.steps_at_kill < k.total_steps
    assert "evaluate" in k.finished_rules                   # a finished job that must not run again
    assert k.locked.returncode != 0 and "lock" in (k.locked.stdout + k.locked.stderr).lower()
    assert k.unlock.returncode == 0 and k.rerun.returncode == 0, relkit.explain(k.rerun, k.workdir)

    # no finished job ran again: the rerun planned exactly the rest, and their outputs were not touched
    again = relkit.planned_jobs(k.rerun.stdout + k.rerun.stderr)
    expected = {r: n - k.finished_rules.count(r) for r, n in k.planned.items() if n - k.finished_rules.count(r)}
    assert again == expected, (again, expected, k.finished_rules)
    assert k.kept and {path: os.stat(path).st_mtime_ns for path in k.kept} == k.kept
    run = json.loads((k.workdir / BENCH / k.killed_job / "run.json").read_text())
    assert run["status"] == "ok" and run["steps"] == k.total_steps
    assert not list((k.workdir / BENCH).rglob(".*.tmp"))  # temp files/dirs of the killed writers were removed

    # the grid completed, and its rows equal those of the uninterrupted reference
    got = relkit.comparable(relkit.read_tidy(k.workdir))
    assert set(got["status"]) == {"ok"}, got[got["status"] != "ok"]
    assert len(relkit.cells_of(got)) == 3 + 1            # clean: base, retrain, npo; relearned: npo
    want = relkit.comparable(relkit.read_tidy(reference_run.workdir), relkit.cells_of(got))
    pd.testing.assert_frame_equal(got, want)


# ------------------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_checkpoints_and_the_rerun_resumes_bit_identically(sigterm_run, reference_run):
    t, ref = sigterm_run, reference_run.workdir
    wd, target = t.workdir, t.target
    steps = relkit.mini_config()["unlearning"]["train"]["steps"]
    assert t.first_returncode != 0, t.first[-3000:]
    assert 5 <= t.reached < steps                        # a checkpoint at the step the job had reached
    assert f"after step {t.reached}; state saved in" in t.first_job_log
    job_log = (wd / BENCH / "logs" / f"{NPO}.log").read_text()
    assert not t.output_after_failure                    # Snakemake removed the failed job's output

    assert t.rerun.returncode == 0, relkit.explain(t.rerun, wd)
    run = json.loads((wd / target / "run.json").read_text())
    assert run["resumed_from"] == t.reached and run["steps"] == steps and run["status"] == "ok"
    assert f"resumed from step {t.reached} of {steps}" in job_log
    weights = (wd / target / "model" / "model.safetensors").read_bytes()
    assert weights == (ref / target / "model" / "model.safetensors").read_bytes()
    losses = [json.loads(l)["loss"] for l in (wd / target / "train_log.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(l)["loss"] for l in (ref / target / "train_log.jsonl").read_text().splitlines()]
    assert losses == ref_losses
    assert not (wd / BENCH / "checkpoints" / NPO / "state").exists()   # cleared once the outputs were written


# ------------------------------------------------------------------------------------------------ keep-going
GA_NAN = "unlearn/ga/lr~1e9/seed~0"          # a real NaN: learning rate 1e9
GA_FAIL = GA                                 # the miniature config's GA, made to fail by injection
#: a 5-step relearning attack: the keep-going run is about which jobs run, not about their numbers
QUICK_RELEARN = {**RELEARN_ONE, "relearn": {**RELEARN_ONE["relearn"], "steps": [5]}}
RELEARN = relkit.attack_params(relkit.variant(attacks=QUICK_RELEARN), "relearn")[0]


def test_keep_going_finishes_independent_branches_and_the_aggregate_marks_missing_cells(reference_run, tmp_path):
    cfg = relkit.variant(methods={"ga": {"lr": [1.0e9, *MINI_METHODS["ga"]["lr"]]}, "npo": MINI_METHODS["npo"]},
                         attacks=QUICK_RELEARN, evaluation={"max_items": 4},  # the science does not matter here
                         **{"unlearning.train.on_divergence": "record", "unlearning.train.steps": 5,
                            "unlearning.train.checkpoint_every": 2})
    wd = relkit.seed_workdir(reference_run.workdir, tmp_path / "wf", cfg)
    # both jobs die HALF-WAY (utils/faults.py): GA after its 3rd of 5 steps (checkpoint at step 2 on disk, step 3
    # in the live log), the NPO evaluation after its first KnowMem split (MCQ already computed)
    faults = f"unlearn@{GA_FAIL}#step=3,evaluate@{NPO}/none/#metric=knowmem"
    res = relkit.run_snakemake(wd, "--keep-going", env=relkit.snakemake_env({"RU_FAULT_INJECT": faults}))
    assert res.returncode != 0
    ev = wd / BENCH / "eval"
    # the injected failures, named in their job logs, mid-way
    ga_log = (wd / BENCH / "logs" / f"{GA_FAIL}.log").read_text()
    assert "InjectedFault" in ga_log and "at step=3" in ga_log, ga_log[-2000:]
    eval_log = (wd / BENCH / "logs" / "eval" / NPO / "none" / "default.log").read_text()
    assert "InjectedFault" in eval_log and "at metric=knowmem" in eval_log, eval_log[-2000:]
    # what they had written: the checkpoint survives (outside the output), no partial output is left behind
    ck = wd / BENCH / "checkpoints" / GA_FAIL
    assert json.loads((ck / "state" / "meta.json").read_text())["step"] == 2
    assert relkit.count_lines(ck / "train_log.live.jsonl") == 3
    assert not (wd / BENCH / GA_FAIL).exists() and not (ev / NPO / "none").exists()
    # every branch that does not depend on a failed job finished
    for cell in ("models/base/none/default", "models/retrain/none/default", f"{NPO}/relearn/{RELEARN}",
                 f"{GA_NAN}/none/default", f"{GA_NAN}/relearn/{RELEARN}"):
        assert (ev / cell / "metrics.json").is_file(), cell
    assert json.loads((ev / GA_NAN / "none" / "default" / "metrics.json").read_text())["status"] == "diverged"
    assert not (wd / BENCH / "tables" / "metrics.csv").exists()      # the aggregate could not run
    # the recorded divergence names step and term
    run = json.loads((wd / BENCH / GA_NAN / "run.json").read_text())
    assert run["status"] == "diverged" and run["steps"] < run["total_steps"]
    div = run["divergence"]
    assert div["term"].startswith("loss") and div["step"] >= 1 and div["message"].startswith("ga: non-finite")

    # the partial aggregate: nothing is rerun, every expected cell is in the table with its status
    part = relkit.run_snakemake(wd, "--config", "allow_missing=true")
    assert part.returncode == 0, relkit.explain(part, wd)
    assert relkit.planned_jobs(part.stdout + part.stderr) == {"aggregate": 1, "all": 1}
    df = relkit.comparable(relkit.read_tidy(wd))       # cost rows come from run.json: not evaluation cells
    status = {c: set(g["status"]) for c, g in df.groupby(["model_id", "attack", "attack_params"])}
    assert status == {
        ("models/base", "none", "default"): {"ok"}, ("models/retrain", "none", "default"): {"ok"},
        (NPO, "none", "default"): {"missing"}, (NPO, "relearn", RELEARN): {"ok"},
        (GA_FAIL, "none", "default"): {"missing"}, (GA_FAIL, "relearn", RELEARN): {"missing"},
        (GA_NAN, "none", "default"): {"diverged"}, (GA_NAN, "relearn", RELEARN): {"diverged"}}
    summary = (wd / BENCH / "tables" / "summary.md").read_text()
    assert "missing" in summary and "diverged" in summary

    # once the cause is gone, a normal run recomputes only the failed jobs and re-aggregates without holes
    fixed = relkit.run_snakemake(wd)
    assert fixed.returncode == 0, relkit.explain(fixed, wd)
    assert "resumed from step 2" in (wd / BENCH / "logs" / f"{GA_FAIL}.log").read_text()   # not from step 0
    planned = relkit.planned_jobs(fixed.stdout + fixed.stderr)
    assert planned == {"unlearn": 1, "attack_model": 1, "evaluate": 3, "aggregate": 1, "all": 1}, planned
    df = relkit.comparable(relkit.read_tidy(wd))
    assert "missing" not in set(df["status"]) and len(relkit.cells_of(df)) == 8
    assert set(df[df["model_id"] == GA_NAN]["status"]) == {"diverged"}


# ------------------------------------------------------------------------------------------------ divergence
def test_divergence_fails_by_default_naming_method_step_and_term(reference_run, tmp_path):
    """The unlearning rule's command with the default on_divergence (fail) and a learning rate of 1e9."""
    ref = reference_run.workdir / BENCH
    cfg = relkit.mini_config()
    cmd = [str(relkit.BIN / "ru"), "unlearn", "--method", "ga", "--settings", '{"lr": 1e9}',
           "--train", json.dumps(cfg["unlearning"]["train"]), "--benchmark", json.dumps(cfg["benchmark"]),
           "--data", str(ref / "data"), "--model-dir", str(ref / "models" / "base"), "--seed", "0",
           "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"]
    res = subprocess.run(cmd, env=relkit.snakemake_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    m = re.search(r"^ru unlearn: error: DivergenceError: ga: non-finite (loss\w*) = (nan|inf|-inf) at step (\d+)", last)
    assert m, last
    assert not (tmp_path / "out").exists() and not (tmp_path / "ck" / "state").exists()
