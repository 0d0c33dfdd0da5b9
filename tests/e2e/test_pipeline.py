"""The whole DAG on the miniature config, in a temp copy of the workflow: data -> models -> unlearn -> attack ->
evaluate -> aggregate. Asserts the science from the aggregated CSV, then that a second dry run has nothing to do."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def snakemake_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    return env


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    shutil.copytree(ROOT / "envs", dest / "envs")
    shutil.copy2(ROOT / "tests" / "e2e" / "mini_config.yaml", dest / "mini_config.yaml")
    return dest


def run_snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--configfile", "mini_config.yaml", *args]
    return subprocess.run(cmd, cwd=workdir, env=snakemake_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e"))
    res = run_snakemake(workdir)
    if res.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "results").rglob("*.log"))[-5:])
        pytest.fail(f"snakemake failed:\n{res.stderr[-6000:]}\n{logs}")
    df = pd.read_csv(workdir / "results" / "synthetic" / "tables" / "metrics.csv")
    return workdir, df


def value(df, method, metric, attack="none", attack_params="default", params=None):
    rows = df[(df.method == method) & (df.metric == metric) & (df.attack == attack) & (df.attack_params == attack_params)]
    if params is not None:
        rows = rows[rows.params == params]
    assert len(rows) >= 1, f"no row for {method} {metric} {attack} {attack_params}"
    return float(rows.value.mean())


def test_every_grid_cell_has_rows(pipeline_run):
    _, df = pipeline_run
    assert not (df.status == "missing").any(), df[df.status == "missing"]
    clean = df[df.attack == "none"]
    for method in ("base", "retrain", "ga", "graddiff", "npo"):
        for metric in ("forget_mcq_acc", "retain_mcq_acc", "forget_knowmem", "retain_knowmem", "forget_verbmem"):
            assert len(clean[(clean.method == method) & (clean.metric == metric)]) == 1, (method, metric)
    relearn = df[(df.attack == "relearn") & (df.metric == "forget_mcq_acc")]
    # 3 unlearned models + base, 2 step counts each
    assert len(relearn) == 8


def test_base_knows_and_oracle_does_not(pipeline_run):
    _, df = pipeline_run
    base_forget = value(df, "base", "forget_mcq_acc")
    assert base_forget >= 0.6, base_forget                       # chance is 0.25
    assert value(df, "base", "retain_mcq_acc") >= 0.6
    assert value(df, "retrain", "forget_mcq_acc") <= 0.45        # never saw the forget facts
    assert value(df, "retrain", "retain_mcq_acc") >= 0.6


def test_npo_forgets_and_keeps_utility(pipeline_run):
    _, df = pipeline_run
    drop_forget = value(df, "base", "forget_mcq_acc") - value(df, "npo", "forget_mcq_acc")
    drop_retain = value(df, "base", "retain_mcq_acc") - value(df, "npo", "retain_mcq_acc")
    assert drop_forget >= 0.2, drop_forget
    assert drop_retain < drop_forget / 2, (drop_forget, drop_retain)


def test_relearning_brings_knowledge_back(pipeline_run):
    _, df = pipeline_run
    clean = value(df, "npo", "forget_mcq_acc")
    relearned = value(df, "npo", "forget_mcq_acc", attack="relearn", attack_params="fraction~1_steps~50")
    assert relearned > clean + 0.1, (clean, relearned)


def test_summary_and_second_dry_run_has_nothing_to_do(pipeline_run):
    workdir, _ = pipeline_run
    summary = (workdir / "results" / "synthetic" / "tables" / "summary.md").read_text()
    assert "npo" in summary.lower() and "retrain" in summary.lower()
    res = run_snakemake(workdir, "-n")
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
