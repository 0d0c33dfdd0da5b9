"""Operational keys (evaluation.batch_size, unlearning.train.checkpoint_every / progress / keep_checkpoint /
num_processes / distributed,
benchmark.cache_dir, probe.feature_batch_size) do not change any job's tracked params, so editing them reruns
nothing, while a real hyperparameter still reruns its jobs (workflow/rules/common.smk, OPERATIONAL_KEYS).

The tree is a finished tiny grid made of placeholder files that `snakemake --touch --forceall` marks as up to
date, which records every job's params and code in .snakemake/metadata exactly as a real run does; the plans
below are what Snakemake would run next with the edited config. Also checks that the attacked model copy is
temp() (deleted once its evaluation is up to date) while its attack.json stays."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
B = "results/synthetic"
RUN = "unlearn/ga/lr~2e-4/seed~0"
RELEARN = "relearn/fraction~1_steps~2"

CONFIG = {
    "results_dir": "results",
    "benchmark": {"name": "synthetic", "size": "tiny"},
    "model": {"source": "train_tiny"},
    "unlearning": {"seeds": [0], "train": {"steps": 4, "batch_size": 8, "progress": True},
                   "methods": {"ga": {"lr": [2.0e-4]}}},
    "attacks": {"enabled": ["relearn"], "targets": ["unlearned"], "relearn": {"steps": [2], "fraction": [1.0]}},
    "evaluation": {"batch_size": 16},
    "report": {"loss_landscape": False},
}


def _snakemake(wd: Path, cfg: dict, *args: str) -> str:
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(wd), *args,
                           "--cores", "1", "--configfile", str(wd / "run.yaml")],
                          cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _planned(out: str) -> set[str]:
    """Rule names in the dry run's job table ('Nothing to be done' -> empty)."""
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:]]
    return {r[0] for r in rows if len(r) == 2 and r[0] != "total"}


@pytest.fixture(scope="module")
def finished_tree(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("opkeys")
    b = wd / B
    for d in ("data", "models/base", "models/retrain", RUN, f"attack/{RELEARN}/{RUN}/model", "tables/paper",
              "figures"):
        (b / d).mkdir(parents=True, exist_ok=True)
    (b / f"attack/{RELEARN}/{RUN}/attack.json").write_text("{}")
    for cell in ("models/base/none/default", "models/retrain/none/default", f"{RUN}/none/default",
                 f"{RUN}/{RELEARN}"):
        (b / "eval" / cell).mkdir(parents=True)
        for name in ("metrics.json", "items.jsonl"):
            (b / "eval" / cell / name).write_text("{}")
    for name in ("metrics.csv", "summary.md", "summary.html"):
        (b / "tables" / name).write_text("")
    _snakemake(wd, CONFIG, "--touch", "--forceall")
    return wd


@pytest.mark.slow
def test_operational_keys_rerun_nothing_and_hyperparameters_do(finished_tree):
    wd = finished_tree
    # temp(): the attacked copy is gone once its evaluation is up to date; attack.json (kept) is not
    assert not (wd / B / f"attack/{RELEARN}/{RUN}/model").exists()
    assert (wd / B / f"attack/{RELEARN}/{RUN}/attack.json").is_file()
    assert _planned(_snakemake(wd, CONFIG, "-n")) == set()

    ops = yaml.safe_load(yaml.safe_dump(CONFIG))
    ops["evaluation"]["batch_size"] = 2
    ops["unlearning"]["train"].update(checkpoint_every=1, progress=False, keep_checkpoint=True,
                                      num_processes=2, distributed="fsdp")   # GPUs per job, not what it computes
    ops["benchmark"]["cache_dir"] = str(wd / "hf_cache")
    ops["probe"] = {"feature_batch_size": 2}   # no PRISM in this grid: no probe job, but the key must validate
    assert _planned(_snakemake(wd, ops, "-n")) == set()

    # a real evaluation setting reruns every evaluation (and the deleted attacked copy it reads), not training;
    # the job still receives the operational value: the shell command carries the whole section
    real = yaml.safe_load(yaml.safe_dump(ops))
    real["evaluation"]["mink_k"] = 0.2
    out = _snakemake(wd, real, "-n", "-p")
    assert _planned(out) == {"evaluate", "attack_model", "aggregate", "all"}, out[-3000:]
    assert '"batch_size": 2' in out and '"mink_k": 0.2' in out

    # a real training setting reruns the unlearning job and everything after it
    steps = yaml.safe_load(yaml.safe_dump(ops))
    steps["unlearning"]["train"]["steps"] = 5
    assert {"unlearn", "attack_model", "evaluate"} <= _planned(_snakemake(wd, steps, "-n"))
