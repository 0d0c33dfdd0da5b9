"""The workflow on a real (single-node) SLURM cluster.

What this shows, and why each part matters:
1. ``sbatch --wait`` works on the test cluster (the cluster itself, independent of the pipeline).
2. The miniature config (``tests/e2e/mini_config.yaml``), with its grid cut to NPO and one relearning setting on
   the unlearned model, runs through ``snakemake --executor slurm`` with the test workflow profile and gives the
   same ``metrics.csv`` values as the local run of the full miniature config (the session's ``reference_run`` of
   tests/conftest.py; its cells are a superset, with the same seeds): job submission, ``--export=ALL``
   environment passing and status polling do not change any result. The workdir is seeded with the reference
   run's data and models (tests/relkit.py ``seed_workdir``; training them again costs minutes on 2 cores), so
   the cluster runs the evaluation of the base model and the oracle, the unlearning, the attack and their
   evaluations, and the aggregate runs locally (a localrule); the data and model rules' SLURM resources are
   checked by the dry run of the full miniature grid (``test_profile_dry_run``).
3. Preemption: one running unlearning job is sent SIGTERM with ``scancel --signal=TERM`` (what SLURM does on
   preemption / time limit); the job saves a checkpoint under ``results/<bench>/checkpoints/...`` (outside the
   Snakemake output, which Snakemake deletes on failure) and the rerun logs ``resumed from step N``.

The cluster is started by ``tests/slurm/slurm_cluster.sh up`` (apt-get installs the packages when missing) and
every daemon is stopped by PID afterwards, unless it was already running before the test (then it is left
alone) or ``SLURM_TEST_KEEP_CLUSTER=1``. Skipped when the packages cannot be installed (not root, no apt-get, no
package mirror) except under ``make test-slurm`` (RU_REQUIRE_SLURM=1) and in CI (CI=true): there that is a
failure. A cluster that installs but does not start always fails. Run with ``make test-slurm``.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "slurm" / "slurm_cluster.sh"
VENV_BIN = REPO / ".venv" / "bin"
ACCOUNT = os.environ.get("SLURM_TEST_ACCOUNT", "ru_test")
PARTITION = os.environ.get("SLURM_TEST_PARTITION", "debug")
MINI_CONFIG = "tests/e2e/mini_config.yaml"
PROFILE = "tests/slurm/profile"
RESUMED_RE = re.compile(r"resumed from step (\d+)")
SUBMITTED_RE = re.compile(r"submitted with SLURM jobid (\d+)")
# the cost of a run legitimately differs between two runs of the same config
TIMING_METRICS = {"s_per_step", "tokens_per_s", "peak_mem_mb", "probe_grad_ratio", "sam_loss_gain",
                  "gcd_removed_fraction"}


# ------------------------------------------------------------------------------------------------ helpers

def _env() -> dict:
    """The submitting shell's environment: sbatch --export=ALL hands it to every job (venv first on PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if Path(p).name != "noslurm"]   # tests/conftest.py
    env["PATH"] = os.pathsep.join([str(VENV_BIN), *path])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", SLURM_TEST_ACCOUNT=ACCOUNT, SLURM_TEST_PARTITION=PARTITION)
    return env


def _run(cmd, cwd=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def _cluster(sub: str, timeout=900, check=True) -> subprocess.CompletedProcess:
    return _run(["bash", str(SCRIPT), sub], timeout=timeout, check=check)


def _slurmctld_running() -> bool:
    out = _cluster("status", check=False).stdout
    return bool(re.search(r"^slurmctld: running", out, re.M))


def _slurm_config() -> dict:
    """The miniature config with a smaller grid (NPO, one relearning setting on the unlearned model, no
    landscape): 6 SLURM jobs; each also starts its own Snakemake, so the job count sets the test's time."""
    import yaml

    cfg = yaml.safe_load((REPO / MINI_CONFIG).read_text())
    cfg["unlearning"]["methods"] = {"npo": cfg["unlearning"]["methods"]["npo"]}
    cfg["attacks"]["relearn"]["steps"] = cfg["attacks"]["relearn"]["steps"][:1]
    cfg["attacks"]["targets"] = ["unlearned"]
    cfg.setdefault("report", {})["loss_landscape"] = False
    return cfg


def _seeded_copy(reference: Path, dest: Path) -> Path:
    """A copy of the workflow with the SLURM config as run.yaml, the reference run's data and models (and their
    Snakemake metadata, so they are up to date) and the test profile."""
    import relkit   # tests/relkit.py

    relkit.seed_workdir(reference, dest, _slurm_config())
    shutil.copytree(REPO / PROFILE, dest / PROFILE, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _workflow_copy(dest: Path) -> Path:
    """Snakefile, workflow/, config.yaml, the mini config and the test profile: the run must not depend on
    anything else in the checkout (the package itself is installed in the venv)."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake")
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy2(REPO / "config.yaml", dest / "config.yaml")
    shutil.copytree(REPO / "workflow", dest / "workflow", ignore=ignore)
    (dest / "tests" / "e2e").mkdir(parents=True)
    shutil.copy2(REPO / MINI_CONFIG, dest / MINI_CONFIG)
    shutil.copytree(REPO / PROFILE, dest / PROFILE, ignore=ignore)
    if (REPO / "envs").is_dir():  # conda: directives point here (not used without --sdm conda)
        shutil.copytree(REPO / "envs", dest / "envs", ignore=ignore)
    return dest


def _unlearn_runs() -> list:
    """The unlearning runs of the SLURM config (so that SLURM job comments can be matched exactly)."""
    from robust_unlearning.config.grid import unlearn_runs
    from robust_unlearning.config.validate import validate_config

    return unlearn_runs(validate_config(_slurm_config(), deep=False))


def _squeue() -> list[tuple[str, str, str]]:
    """(job id, state, comment) of every job in the queue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, env=_env()).stdout
    rows = []
    for line in out.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def _sacct_state(jobid: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", jobid, "-o", "State"], capture_output=True, text=True,
                         env=_env()).stdout.split()
    return out[0] if out else ""


def _tail(path: Path, n=3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"<{path} unreadable>"


def _read_metrics(path: Path):
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=True)
    df = df[~df["metric"].isin(TIMING_METRICS)]
    # numbers that cannot exist by definition (the retrain oracle's Unlearn Score: it is the PrivLeak reference)
    df = df[~df["note"].fillna("").astype(str).str.startswith("not computable")]
    return {(r.model_id, r.attack, str(r.attack_params), r.metric): (float(r.value), str(r.status))
            for r in df.itertuples(index=False)}


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


class _Snakemake:
    """A snakemake process in its own session, so that it can be stopped (by its own PID) if the test fails."""

    def __init__(self, cmd: list[str], cwd: Path, log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=self.fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.fh.flush()

    def jobids(self) -> set[str]:
        return set(SUBMITTED_RE.findall(_tail(self.log, 10**7)))

    def stop(self) -> None:
        """SIGINT makes the slurm executor cancel its running jobs (SIGTERM would wait for them)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()


# ----------------------------------------------------------------------------------------------- fixtures

def slurm_required() -> bool:
    """Under ``make test-slurm`` (RU_REQUIRE_SLURM=1) and in CI (CI=true, where installing works) a cluster that
    cannot be installed or started is a FAILURE: the real-SLURM test must not pass by being skipped there.
    Elsewhere (a developer's laptop without root) it is a skip."""
    truthy = ("1", "true", "yes")
    return (os.environ.get("RU_REQUIRE_SLURM", "").lower() in truthy
            or os.environ.get("CI", "").lower() in truthy)


def _unavailable(reason: str):
    if slurm_required():
        pytest.fail(f"SLURM is required here (RU_REQUIRE_SLURM / CI) but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster():
    if sys.platform != "linux" or os.geteuid() != 0:
        _unavailable("the test cluster needs root on Linux (apt-get, daemons)")
    if not (shutil.which("sbatch") and shutil.which("slurmctld")) and not shutil.which("apt-get"):
        _unavailable("SLURM is not installed and apt-get is not available to install it")
    inst = _cluster("install", check=False)
    if inst.returncode != 0:
        _unavailable(f"apt-get could not install the SLURM packages: {inst.stderr.strip()[-800:]}")
    owned = not _slurmctld_running()
    up = _cluster("up", check=False)      # a cluster that does not start fails in every setting
    assert up.returncode == 0, f"tests/slurm/slurm_cluster.sh up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}"
    yield {"account": ACCOUNT, "partition": PARTITION}
    if owned and os.environ.get("SLURM_TEST_KEEP_CLUSTER") != "1":
        down = _cluster("down", check=False)
        assert down.returncode == 0, down.stderr
        assert not _slurmctld_running(), _cluster("status", check=False).stdout


@pytest.fixture
def own_jobs():
    """Job ids submitted by a test; any still queued at the end are cancelled (ours only)."""
    ids: set[str] = set()
    yield ids
    queued = {j for j, _, _ in _squeue()}
    mine = sorted(ids & queued)
    if mine:
        subprocess.run(["scancel", *mine], env=_env(), check=False)


# --------------------------------------------------------------------------------------------------- tests

def test_sbatch_wait(slurm_cluster, tmp_path, own_jobs):
    out = tmp_path / "hello.txt"
    try:
        proc = _run(["sbatch", "--parsable", "--wait", "-A", ACCOUNT, "-p", PARTITION, "-n1", "--mem", "100",
                     "-t", "5", "-o", str(tmp_path / "job_%j.log"), "--export=ALL", "--wrap",
                     f"echo hello from $(hostname) > {out}; python -c 'import sys; print(sys.prefix)' >> {out}"],
                    timeout=300)
    except subprocess.TimeoutExpired:   # say why the job did not run: its state and reason, the node's state
        state = "\n".join(subprocess.run(cmd, capture_output=True, text=True, env=_env()).stdout
                          for cmd in (["squeue", "-o", "%i %T %r %k"], ["sinfo", "-N", "-o", "%N %T %E %m %c"],
                                      ["scontrol", "show", "jobs"]))
        pytest.fail(f"sbatch --wait: a 1-CPU job did not finish in 300 s on the test cluster:\n{state[-4000:]}")
    jobid = proc.stdout.strip().split(";")[0]
    own_jobs.add(jobid)
    text = out.read_text()
    assert text.startswith("hello from "), text
    assert str(REPO / ".venv") in text, f"--export=ALL did not pass the venv PATH: {text}"
    for _ in range(50):  # slurmdbd records the end a moment after sbatch --wait returns
        if _sacct_state(jobid) == "COMPLETED":
            break
        time.sleep(0.2)
    assert _sacct_state(jobid) == "COMPLETED"


def test_profile_dry_run(tmp_path):
    """The test profile plans the mini grid (no cluster needed: a dry run calls no SLURM binary)."""
    wd = _workflow_copy(tmp_path / "wf")
    proc = _run(["snakemake", "-n", "--workflow-profile", PROFILE, "--configfile", MINI_CONFIG], cwd=wd,
                timeout=300)
    assert "unlearn" in proc.stdout and "aggregate" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.timeout(7200)
def test_pipeline_on_slurm_matches_local_and_resumes(slurm_cluster, reference_run, tmp_path, own_jobs):
    runs = _unlearn_runs()
    comments = {f"rule_unlearn_wildcards_{r.method}_{r.params}_{r.seed}": r for r in runs}
    wd = _seeded_copy(reference_run.workdir, tmp_path / "slurm")
    smk = ["snakemake", "--executor", "slurm", "--workflow-profile", PROFILE, "--configfile", "run.yaml"]

    # ---- run 1 on SLURM; SIGTERM one unlearning job while it trains --------------------------------------
    first = _Snakemake(smk, wd, tmp_path / "slurm_run1.log")
    victim = victim_run = None
    try:
        deadline = time.time() + 2400
        while victim is None and first.proc.poll() is None and time.time() < deadline:
            for jobid, state, comment in _squeue():
                run = comments.get(comment)
                if run is None or state != "RUNNING":
                    continue
                if _training_started(wd, run):
                    victim, victim_run = jobid, run
                    break
            time.sleep(0.1)
        own_jobs.update(first.jobids())
        assert victim is not None, ("no unlearning job was caught while training; snakemake log:\n"
                                    + _tail(first.log))
        subprocess.run(["scancel", "--signal=TERM", victim], env=_env(), check=True)
        rc = first.wait(timeout=2400)
    finally:
        own_jobs.update(first.jobids())
        first.stop()
    ckpt = wd / "results/synthetic/checkpoints/unlearn" / _rel(victim_run)
    log = wd / "results/synthetic/logs/unlearn" / f"{_rel(victim_run)}.log"
    assert rc != 0, "the run with a SIGTERMed job should fail"
    assert _sacct_state(victim) in {"CANCELLED", "FAILED"} or _sacct_state(victim).startswith("CANCELLED"), \
        _sacct_state(victim)
    assert list(ckpt.rglob("state.pt")), f"no checkpoint (state.pt) under {ckpt}; job log:\n{_tail(log)}"

    # ---- run 2: resumes the interrupted job from its checkpoint and finishes the grid -------------------
    _run(["snakemake", "--unlock", "--workflow-profile", PROFILE, "--configfile", "run.yaml"], cwd=wd,
         timeout=300)
    second = _Snakemake(smk + ["--rerun-incomplete"], wd, tmp_path / "slurm_run2.log")
    try:
        rc2 = second.wait(timeout=3000)
    finally:
        own_jobs.update(second.jobids())
        second.stop()
    assert rc2 == 0, f"SLURM rerun failed:\n{_tail(second.log, 6000)}"
    # the loop records the resume step in run.json ("resumed_from"); a "resumed from step N" log line is
    # accepted as well (whichever the CLI prints)
    import json

    run_json = json.loads((wd / "results/synthetic" / victim_run.model_id / "run.json").read_text())
    resumed = RESUMED_RE.findall(log.read_text(errors="replace"))
    step = run_json.get("resumed_from") or (int(resumed[-1]) if resumed else None)
    assert step and step > 0, (f"the rerun of {victim_run.model_id} did not resume from its checkpoint "
                               f"(run.json resumed_from={run_json.get('resumed_from')!r}):\n{_tail(log)}")
    assert run_json["steps"] == run_json["total_steps"] and run_json["status"] == "ok"
    assert not list(ckpt.rglob("state.pt")), "the checkpoint should be removed after a completed run"

    # ---- the same config locally: the session's reference run (tests/conftest.py) ----------------------------
    # the SLURM grid is a sub-grid of the reference's (same data, models and seeds): its rows must be there, equal
    got = _read_metrics(wd / "results/synthetic/tables/metrics.csv")
    want = _read_metrics(reference_run.workdir / "results/synthetic/tables/metrics.csv")
    assert got and all(status == "ok" for _, status in got.values()), sorted(got.items())[:10]
    assert {k[0] for k in got} == {"models/base", "models/retrain", victim_run.model_id}, sorted({k[0] for k in got})
    assert set(got) <= set(want), f"rows only on SLURM: {sorted(set(got) - set(want))[:10]}"
    want = {k: want[k] for k in got}
    diff = [(k, got[k], want[k]) for k in sorted(got)
            if got[k][1] != want[k][1] or not _same(got[k][0], want[k][0])]
    resumed_id = victim_run.model_id
    assert not diff, (f"{len(diff)} of {len(got)} metric rows differ between SLURM and local "
                      f"({sum(resumed_id in k[0] for k, _, _ in diff)} of them involve the resumed run "
                      f"{resumed_id}); first: {diff[:8]}")


def _rel(run) -> str:
    """``<method>/<params>/seed~<s>``: the part of a run's paths below ``unlearn/`` (logs, checkpoints)."""
    return f"{run.method}/{run.params}/seed~{run.seed}"


def _training_started(wd: Path, run) -> bool:
    """True once the unlearning job of ``run`` has done an optimizer step (so SIGTERM lands inside the loop,
    whose handler checkpoints after the current step and exits 143)."""
    # the loop appends one JSON line per optimizer step to <checkpoint dir>/train_log.live.jsonl
    live = wd / "results/synthetic/checkpoints/unlearn" / _rel(run) / "train_log.live.jsonl"
    try:
        return live.stat().st_size > 0
    except OSError:
        return False
