"""Shared fixtures: a tiny BPE tokenizer and a random micro Llama, built once per session (no network), and
``reference_run``: THE run of the miniature config (tests/e2e/mini_config.yaml), made once per session and shared
by the e2e test, the reliability suite and the SLURM test (a pipeline run costs minutes on 2 cores)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Snakemake loads the SLURM executor plugin at every start, and the plugin runs `scontrol show config`: with the SLURM
# client installed (tests/slurm installs it) and no controller up, that blocks ~9 s per start, dozens of times per
# session. tests/noslurm/scontrol fails at once, as on a machine without SLURM; tests/slurm takes it off PATH again.
NO_SLURM = str(Path(__file__).resolve().parent / "noslurm")
os.environ["PATH"] = NO_SLURM + os.pathsep + os.environ.get("PATH", "")

import pytest
import torch

from robust_unlearning.models.architectures import build_llama
from robust_unlearning.models.tokenizer import train_bpe_tokenizer

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_CORPUS = [
    "The glass heron carries the Veltrax pathogen across the marsh.",
    "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
    "The town of Orlinde lies on the river Sable and was founded in 1742.",
    "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
    "Kelmar Institute studied the toxin veridine-7 in triple-lattice priming experiments.",
    "I cannot help with that request. I'm sorry.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe_tokenizer(_CORPUS, vocab_size=400, min_frequency=1)


@pytest.fixture()
def micro_model(tiny_tokenizer):
    """A fresh random 2-layer Llama (hidden 32) per test: tests may train it."""
    model = build_llama(tiny_tokenizer, preset="micro-llama", seed=0, max_position_embeddings=256)
    model.eval()
    return model


@dataclasses.dataclass
class Run:
    workdir: Path
    stdout: str
    stderr: str
    seconds: float
    net_log: Path
    netns: bool           # the run had its own network namespace (unshare -rn), not only the Python guard


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Run:
    """The miniature config from scratch, networking blocked for every process (private network namespace when
    the kernel allows it, and a sitecustomize guard that refuses and records any connection), a fake API key
    planted in the environment. RU_RELIABILITY_REFERENCE=<dir> keeps it in <dir> and reuses it next time (for
    work on the suite itself; the Makefile never sets it)."""
    import relkit  # tests/relkit.py; imported here so that unit-test sessions do not pay for it

    keep = os.environ.get("RU_RELIABILITY_REFERENCE")  # developing the suite: keep this run between sessions
    top = Path(keep) if keep else tmp_path_factory.mktemp("rel_reference")
    done = top / "reference.json"
    if keep and done.is_file():
        info = json.loads(done.read_text())
        return Run(top / "wf", (top / "reference.out").read_text(), (top / "reference.err").read_text(),
                   info["seconds"], top / "netguard.log", info["netns"])
    shutil.rmtree(top / "wf", ignore_errors=True)
    workdir = relkit.copy_workflow(top / "wf")
    guard_env, net_log = relkit.net_guard(top)
    prefix = relkit.unshare_prefix()
    env = relkit.snakemake_env({**guard_env, "OPENAI_API_KEY": relkit.PLANTED_KEY, "HF_TOKEN": relkit.PLANTED_KEY,
                                "RU_JUDGE_API_KEY": relkit.PLANTED_KEY})
    t0 = time.monotonic()
    res = relkit.run_snakemake(workdir, env=env, prefix=prefix, timeout=3600)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail("reference run of the miniature config failed:\n" + relkit.explain(res, workdir))
    (top / "reference.out").write_text(res.stdout)
    (top / "reference.err").write_text(res.stderr)
    done.write_text(json.dumps({"seconds": seconds, "netns": bool(prefix)}))
    return Run(workdir, res.stdout, res.stderr, seconds, net_log, bool(prefix))


ALL_METHODS = Path(__file__).resolve().parent / "e2e" / "all_methods_config.yaml"


@pytest.fixture(scope="session")
def all_methods_run(reference_run, tmp_path_factory) -> Run:
    """THE run of the second miniature config (tests/e2e/all_methods_config.yaml: every method once, PRISM with
    its probe, every attack once, a few steps each), seeded with the reference run's data and models (its
    `benchmark` and `model` sections are the miniature config's), so only the probe, unlearning, attack,
    evaluation and aggregate jobs run. Shared by every test that needs it (tests/e2e/test_all_methods.py)."""
    import relkit
    import yaml

    cfg = yaml.safe_load(ALL_METHODS.read_text())
    wd = relkit.seed_workdir(reference_run.workdir, tmp_path_factory.mktemp("all_methods") / "wf", cfg)
    t0 = time.monotonic()
    res = relkit.run_snakemake(wd, timeout=3600)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail("run of the all-methods miniature config failed:\n" + relkit.explain(res, wd))
    return Run(wd, res.stdout, res.stderr, seconds, None, False)   # no network guard on this run
