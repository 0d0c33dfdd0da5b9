"""Session fixtures of the reliability suite: the SIGKILL and SIGTERM runs. The uninterrupted run of the miniature
config they are compared with, ``reference_run``, lives in tests/conftest.py (shared with the e2e and SLURM tests;
see tests/relkit.py for why runs are shared)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import relkit


@dataclasses.dataclass
class KilledRun:
    workdir: Path
    kill_returncode: int
    killed_job: str              # model id of the unlearning job that was mid-way
    steps_at_kill: int
    total_steps: int
    planned: dict                # {rule: jobs} of the killed run
    finished_rules: list         # rules of the jobs finished before the kill
    kept: dict                   # {path: mtime_ns} of every output of those jobs, before the rerun
    locked: object               # the rerun attempted before --unlock
    unlock: object
    rerun: object


def _job_outputs(text: str) -> dict[str, list[str]]:
    """{jobid: [output paths]} of every job block of a Snakemake log."""
    out = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        jid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        outs = re.search(r"^\s+output: (.+)$", block, re.M)
        if jid and outs:
            out[jid.group(1)] = [p.strip() for p in outs.group(1).split(",")]
    return out


def _mtimes(path: Path) -> dict[str, int]:
    paths = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    return {str(p): p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="session")
def killed_run(reference_run, tmp_path_factory) -> KilledRun:
    """A second run of the miniature config's unlearning settings on a smaller grid (NPO, one relearning setting),
    seeded with the reference's data and models (training them again costs minutes; their from-scratch
    determinism has its own test in test_rel_determinism.py). SIGKILL hits the whole process group while the
    unlearning job is mid-way and at least one evaluation job has finished; then --unlock and --rerun-incomplete.
    Shared by the SIGKILL test and the determinism test (same seeds as the reference: identical weights and rows)."""
    cfg = relkit.variant(methods={"npo": relkit.MINI_METHODS["npo"]}, attacks=relkit.RELEARN_ONE)
    top = tmp_path_factory.mktemp("rel_sigkill")
    wd = relkit.seed_workdir(reference_run.workdir, top / "wf", cfg)
    log_path = top / "killed_run.log"
    steps = cfg["unlearning"]["train"]["steps"]
    checkpoints = wd / relkit.BENCH / "checkpoints" / "unlearn"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(relkit.snakemake_cmd(), cwd=wd, env=relkit.snakemake_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def mid_unlearning():
            if proc.poll() is not None:
                raise AssertionError("snakemake ended before the kill:\n" + log_path.read_text()[-3000:])
            if not relkit.finished_jobs(log_path.read_text()):
                return None  # at least one finished job, so that "not recomputed" means something
            for live in checkpoints.rglob("train_log.live.jsonl"):
                n = relkit.count_lines(live)
                if 2 <= n < steps - 3 and relkit.ru_pids(wd, "unlearn"):
                    return live, n
            return None

        live, n = relkit.wait_for(mid_unlearning, timeout=1800, what="a finished job and an unlearning job mid-way")
        relkit.kill_group(proc, signal.SIGKILL)          # snakemake and every job it started
        proc.wait(timeout=60)
    finally:
        relkit.kill_group(proc, signal.SIGKILL)
    relkit.wait_for(lambda: not relkit.pids_in(wd), timeout=60, what="every process of the killed run to exit")
    text = log_path.read_text()
    outputs = _job_outputs(text)
    kept: dict[str, int] = {}
    for jid in re.findall(r"Finished jobid: (\d+) \(Rule: \w+\)", text):
        for p in outputs.get(jid, []):
            kept |= _mtimes(wd / p)
    locked = relkit.run_snakemake(wd, "--rerun-incomplete")   # refused: the killed run left its lock behind
    unlock = relkit.run_snakemake(wd, "--unlock")
    rerun = relkit.run_snakemake(wd, "--rerun-incomplete", timeout=1800)
    return KilledRun(wd, proc.returncode, live.parent.relative_to(wd / relkit.BENCH / "checkpoints").as_posix(), n,
                     steps, relkit.planned_jobs(text), relkit.finished_jobs(text), kept, locked, unlock, rerun)


@dataclasses.dataclass
class TermRun:
    workdir: Path
    target: str                  # the unlearning job that gets SIGTERM (NPO, seed 0)
    first: str                   # snakemake output of the interrupted invocation
    first_returncode: int
    reached: int                 # step of the checkpoint it wrote
    output_after_failure: bool   # did the failed job's output survive (it must not)
    first_job_log: str           # the interrupted job's log (the rerun overwrites it)
    rerun: object
    seed1_eval: str              # evaluation of NPO with unlearning seed 1 (the different-seed determinism test)


@pytest.fixture(scope="session")
def sigterm_run(reference_run, tmp_path_factory) -> TermRun:
    """NPO with unlearning seeds 0 and 1, seeded with the reference's data, models and oracle evaluation. Seed 0's
    unlearning job gets SIGTERM after step 5 (as SLURM does at a time limit) while seed 1 runs beside it; then the
    same targets again. Shared by the SIGTERM test and the different-seed determinism test."""
    cfg = relkit.variant(methods={"npo": relkit.MINI_METHODS["npo"]}, attacks={"enabled": []},
                         **{"unlearning.seeds": [0, 1]})
    wd = relkit.seed_workdir(reference_run.workdir, tmp_path_factory.mktemp("rel_sigterm") / "wf", cfg,
                             extra=["eval/models/retrain/none"])
    seed1 = relkit.NPO.replace("seed~0", "seed~1")
    target = f"{relkit.BENCH}/{relkit.NPO}"
    seed1_eval = f"{relkit.BENCH}/eval/{seed1}/none/default/metrics.json"
    live = wd / relkit.BENCH / "checkpoints" / relkit.NPO / "train_log.live.jsonl"
    proc = subprocess.Popen(relkit.snakemake_cmd(target, seed1_eval), cwd=wd, env=relkit.snakemake_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def at_step_5():
            if proc.poll() is not None:   # fail now, not after the timeout
                raise AssertionError("snakemake ended before step 5 was seen:\n" + proc.stdout.read()[-3000:])
            return relkit.count_lines(live) >= 5 and relkit.ru_pids(wd, "unlearn", target)

        pids = relkit.wait_for(at_step_5, timeout=1800, what="unlearning step 5")
        os.kill(pids[0], signal.SIGTERM)                 # the job's own process, as SLURM signals the job step
        first, _ = proc.communicate(timeout=1800)
    finally:
        relkit.kill_group(proc, signal.SIGKILL)
    state = wd / relkit.BENCH / "checkpoints" / relkit.NPO / "state" / "meta.json"
    reached = json.loads(state.read_text())["step"] if state.is_file() else -1
    survived = (wd / target).exists()
    job_log = (wd / relkit.BENCH / "logs" / f"{relkit.NPO}.log").read_text()
    rerun = relkit.run_snakemake(wd, target, seed1_eval, timeout=1800)
    return TermRun(wd, target, first, proc.returncode, reached, survived, job_log, rerun, seed1_eval)
