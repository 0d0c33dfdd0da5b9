"""Faults injected into real Snakemake runs of (variants of) the miniature config.

- SIGKILL of the whole snakemake process group in the middle of an unlearning job, then --unlock and
  --rerun-incomplete: the grid completes, no finished job runs again, the tables equal the uninterrupted run's.
- SIGTERM of one unlearning job (what SLURM sends at a time limit): it checkpoints, the rerun resumes from the
  step it reached, and the final weights are bit-identical to the uninterrupted run's.
- Jobs that fail (RU_FAULT_INJECT) under --keep-going: independent branches finish; `--config allow_missing=true`
  aggregates and marks the missing cells; a later normal run recomputes only the failed jobs.
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
from relkit import BENCH, MINI_METHODS, NPO, RELEARN_10

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def _job_outputs(text: str) -> dict[str, list[str]]:
    """{jobid: [output paths]} of every job block of a Snakemake log."""
    out = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        jid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        outs = re.search(r"^\s+output: (.+)$", block, re.M)
        if jid and outs:
            out[jid.group(1)] = [p.strip() for p in outs.group(1).split(",")]
    return out


def _finished_ids(text: str) -> list[str]:
    return re.findall(r"Finished jobid: (\d+) \(Rule: \w+\)", text)


def _mtimes(path):
    if path.is_dir():
        return {str(p): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))} | {str(path): path.stat().st_mtime_ns}
    return {str(path): path.stat().st_mtime_ns}


# ------------------------------------------------------------------------------------------------ SIGKILL
def test_sigkill_mid_unlearning_then_unlock_and_rerun_incomplete(reference_run, tmp_path):
    ref = reference_run.workdir
    cfg = relkit.variant(methods=MINI_METHODS, attacks=RELEARN_10)
    wd = relkit.seed_workdir(ref, tmp_path / "wf", cfg)
    log_path = tmp_path / "killed_run.log"
    steps = cfg["unlearning"]["train"]["steps"]
    checkpoints = wd / BENCH / "checkpoints" / "unlearn"

    with open(log_path, "w") as log:
        proc = subprocess.Popen(relkit.snakemake_cmd(), cwd=wd, env=relkit.snakemake_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def mid_unlearning():
            if proc.poll() is not None:
                raise AssertionError("snakemake ended before the kill:\n" + log_path.read_text()[-3000:])
            if not _finished_ids(log_path.read_text()):
                return None  # wait until at least one job is finished, so that "not recomputed" means something
            for live in checkpoints.rglob("train_log.live.jsonl"):
                if 2 <= relkit.count_lines(live) < steps - 2 and relkit.ru_pids(wd, "unlearn"):
                    return live
            return None

        live = relkit.wait_for(mid_unlearning, timeout=900, what="a finished job and an unlearning job mid-way")
        relkit.kill_group(proc, signal.SIGKILL)          # the whole process group: snakemake and its jobs
        proc.wait(timeout=60)
    finally:
        relkit.kill_group(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    relkit.wait_for(lambda: not relkit.pids_in(wd), timeout=60, what="every process of the killed run to exit")
    killed_text = log_path.read_text()
    killed_job = live.parent.relative_to(wd / BENCH / "checkpoints").as_posix()
    assert not (wd / BENCH / killed_job / "run.json").exists()

    outputs = _job_outputs(killed_text)
    finished = _finished_ids(killed_text)
    planned = relkit.planned_jobs(killed_text)
    done_rules = relkit.finished_jobs(killed_text)
    kept = {}
    for jid in finished:
        for p in outputs[jid]:
            kept |= _mtimes(wd / p)

    locked = relkit.run_snakemake(wd, "--rerun-incomplete")   # the killed run left its lock behind
    assert locked.returncode != 0 and "lock" in (locked.stdout + locked.stderr).lower(), locked.stderr[-2000:]
    unlock = relkit.run_snakemake(wd, "--unlock")
    assert unlock.returncode == 0, relkit.explain(unlock, wd)
    rerun = relkit.run_snakemake(wd, "--rerun-incomplete")
    assert rerun.returncode == 0, relkit.explain(rerun, wd)

    # no finished job ran again: the rerun planned exactly the rest, and their outputs were not touched
    again = relkit.planned_jobs(rerun.stdout + rerun.stderr)
    expected = {r: n - done_rules.count(r) for r, n in planned.items() if n - done_rules.count(r) > 0}
    assert again == expected, (again, expected, done_rules)
    assert kept and {path: os.stat(path).st_mtime_ns for path in kept} == kept
    assert (wd / BENCH / killed_job / "run.json").is_file()

    # the grid completed, and its rows equal those of the uninterrupted reference
    got = relkit.comparable(relkit.read_tidy(wd))
    assert set(got["status"]) == {"ok"}, got[got["status"] != "ok"]
    want = relkit.comparable(relkit.read_tidy(ref), relkit.cells_of(got))
    pd.testing.assert_frame_equal(got, want)
    assert len(relkit.cells_of(got)) == 4 + 3 * 2   # base, retrain, 3 methods clean + 3 relearned


# ------------------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_checkpoints_and_the_rerun_resumes_bit_identically(reference_run, tmp_path):
    ref = reference_run.workdir
    cfg = relkit.variant(methods={"npo": MINI_METHODS["npo"]}, attacks={"enabled": []})
    wd = relkit.seed_workdir(ref, tmp_path / "wf", cfg)
    target = f"{BENCH}/{NPO}"
    ck = wd / BENCH / "checkpoints" / NPO
    job_log = wd / BENCH / "logs" / f"{NPO}.log"
    steps = cfg["unlearning"]["train"]["steps"]

    proc = subprocess.Popen(relkit.snakemake_cmd(target), cwd=wd, env=relkit.snakemake_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        pids = relkit.wait_for(lambda: relkit.count_lines(ck / "train_log.live.jsonl") >= 5
                               and relkit.ru_pids(wd, "unlearn"), timeout=900, what="unlearning step 5")
        os.kill(pids[0], signal.SIGTERM)                 # the job's own process, as SLURM signals the job step
        out, _ = proc.communicate(timeout=600)
    finally:
        relkit.kill_group(proc, signal.SIGKILL)
    assert proc.returncode != 0, out[-3000:]
    meta = json.loads((ck / "state" / "meta.json").read_text())
    reached = meta["step"]
    assert 5 <= reached < steps
    assert f"after step {reached}; state saved in" in job_log.read_text()
    assert not (wd / target).exists()                    # Snakemake removed the failed job's output

    res = relkit.run_snakemake(wd, target)
    assert res.returncode == 0, relkit.explain(res, wd)
    run = json.loads((wd / target / "run.json").read_text())
    assert run["resumed_from"] == reached and run["steps"] == steps and run["status"] == "ok"
    assert f"resumed from step {reached} of {steps}" in job_log.read_text()
    weights = (wd / target / "model" / "model.safetensors").read_bytes()
    assert weights == (ref / target / "model" / "model.safetensors").read_bytes()
    losses = [json.loads(l)["loss"] for l in (wd / target / "train_log.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(l)["loss"] for l in (ref / target / "train_log.jsonl").read_text().splitlines()]
    assert losses == ref_losses
    assert not (ck / "state").exists()                   # cleared once the outputs were written


# ------------------------------------------------------------------------------------------------ keep-going
GA_NAN = "unlearn/ga/lr~1e9/seed~0"
GRADDIFF = "unlearn/graddiff/lr~5e-4/seed~0"


def test_keep_going_finishes_independent_branches_and_the_aggregate_marks_missing_cells(reference_run, tmp_path):
    ref = reference_run.workdir
    attacks = {**RELEARN_10, "targets": ["unlearned", "base"]}
    cfg = relkit.variant(methods={"ga": {"lr": [1.0e9]}, "graddiff": MINI_METHODS["graddiff"],
                                  "npo": MINI_METHODS["npo"]},
                         attacks=attacks, **{"unlearning.train.on_divergence": "record"})
    wd = relkit.seed_workdir(ref, tmp_path / "wf", cfg)
    faults = f"unlearn@/graddiff/,evaluate@{NPO}/none/"
    res = relkit.run_snakemake(wd, "--keep-going", env=relkit.snakemake_env({"RU_FAULT_INJECT": faults}))
    assert res.returncode != 0
    ev = wd / BENCH / "eval"
    # the injected failures, named in their job logs
    assert "InjectedFault" in (wd / BENCH / "logs" / f"{GRADDIFF}.log").read_text()
    assert "InjectedFault" in (wd / BENCH / "logs" / "eval" / NPO / "none" / "default.log").read_text()
    assert not (wd / BENCH / GRADDIFF).exists() and not (ev / NPO / "none").exists()
    # every branch that does not depend on a failed job finished
    relearn = "relearn/fraction~1_steps~10"
    for cell in ("models/base/none/default", "models/retrain/none/default", f"models/base/{relearn}",
                 f"{NPO}/{relearn}", f"{GA_NAN}/none/default", f"{GA_NAN}/{relearn}"):
        assert (ev / cell / "metrics.json").is_file(), cell
    assert json.loads((ev / GA_NAN / "none" / "default" / "metrics.json").read_text())["status"] == "diverged"
    assert not (wd / BENCH / "tables" / "metrics.csv").exists()

    # the partial aggregate: nothing is rerun, every expected cell is in the table
    part = relkit.run_snakemake(wd, "--config", "allow_missing=true")
    assert part.returncode == 0, relkit.explain(part, wd)
    assert relkit.planned_jobs(part.stdout + part.stderr) == {"aggregate": 1, "all": 1}
    df = relkit.read_tidy(wd)
    status = {c: set(g["status"]) for c, g in df.groupby(["model_id", "attack", "attack_params"])}
    assert status[(GRADDIFF, "none", "default")] == {"missing"}
    assert status[(GRADDIFF, "relearn", "fraction~1_steps~10")] == {"missing"}
    assert status[(NPO, "none", "default")] == {"missing"}
    assert status[(NPO, "relearn", "fraction~1_steps~10")] == {"ok"}
    assert status[(GA_NAN, "none", "default")] == {"diverged"}
    assert status[("models/base", "relearn", "fraction~1_steps~10")] == {"ok"}
    assert len(status) == 5 + 4                          # clean: base, retrain, 3 methods; relearned: base, 3 methods
    # the recorded divergence names step and term
    run = json.loads((wd / BENCH / GA_NAN / "run.json").read_text())
    assert run["status"] == "diverged" and run["steps"] < run["total_steps"]
    div = run["divergence"]
    assert div["term"].startswith("loss") and div["step"] >= 1 and div["message"].startswith("ga: non-finite")
    summary = (wd / BENCH / "tables" / "summary.md").read_text()
    assert "missing" in summary and "diverged" in summary

    # once the cause is gone, a normal run recomputes only the failed jobs and re-aggregates without holes
    fixed = relkit.run_snakemake(wd)
    assert fixed.returncode == 0, relkit.explain(fixed, wd)
    planned = relkit.planned_jobs(fixed.stdout + fixed.stderr)
    assert planned == {"unlearn": 1, "attack_model": 1, "evaluate": 3, "aggregate": 1, "all": 1}, planned
    df = relkit.read_tidy(wd)
    assert "missing" not in set(df["status"])
    assert set(df[df["model_id"] == GA_NAN]["status"]) == {"diverged"}


# ------------------------------------------------------------------------------------------------ divergence
def test_divergence_fails_by_default_naming_method_step_and_term(reference_run, tmp_path):
    cfg = relkit.variant(methods={"ga": {"lr": [1.0e9]}}, attacks={"enabled": []})
    wd = relkit.seed_workdir(reference_run.workdir, tmp_path / "wf", cfg)
    res = relkit.run_snakemake(wd, f"{BENCH}/{GA_NAN}")
    assert res.returncode != 0
    last = (wd / BENCH / "logs" / f"{GA_NAN}.log").read_text().strip().splitlines()[-1]
    m = re.search(r"DivergenceError: ga: non-finite (loss\w*) = (nan|inf|-inf) at step (\d+)", last)
    assert m, last
    assert not (wd / BENCH / GA_NAN).exists()
    assert not (wd / BENCH / "checkpoints" / GA_NAN / "state").exists()

