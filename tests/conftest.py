"""Shared fixtures: a tiny BPE tokenizer and a random micro Llama, built once per session (no network), and
``reference_run``: THE run of the miniature config (tests/e2e/mini_config.yaml), made once per session and shared
by the e2e test, the reliability suite and the SLURM test (a pipeline run costs minutes on 2 cores)."""
from __future__ import annotations

import dataclasses
import fcntl
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

# `make test` runs four xdist workers side by side on 2 cores ("four lanes" below): one intra-op thread each
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
torch.set_num_threads(1 if XDIST_WORKER else max(1, min(2, os.cpu_count() or 1)))

# ---- four lanes for `make test` (pytest -n 4 --dist loadgroup --no-loadscope-reorder; docs/architecture.md, "Tests")
# Most of the suite's time is Snakemake pipeline runs, each of which keeps ~1.7 of 2 cores busy, and the SLURM test,
# which mostly waits on the cluster; the rest is short single-threaded tests. One xdist worker per lane keeps the
# 2 cores busy. Lane "pipeline": the tests of the session's shared runs (the reference run, the all-methods run,
# the SIGTERM run), so that each run is made once, by one worker. Lane "seeded": the tests that make runs of their
# own seeded with the reference's data and models (SLURM, keep-going, the SIGKILL run), SLURM first: its first tests
# need no reference, so the cluster starts while the reference run is made. Lanes "unit" (tests/unit, integration,
# e2e) and "checks" (tests/reliability, and first the dress rehearsal, tests/e2e/test_rehearsal.py): everything
# else, at a lower CPU priority, filling what the other two leave
# idle; two of them, so that when the pipeline lanes are done the remaining tests still use both cores. The
# reference run is shared between workers through a file lock (``reference_run``). Without xdist the markers are
# inert.
NICED_LANES = ("unit", "checks")
NICED_LANE_NICE = 10


def _lane(item) -> str:
    names = item.fixturenames
    if "tests/slurm/" in item.nodeid or "killed_run" in names or "test_keep_going" in item.nodeid:
        return "seeded"
    if "reference_run" in names:
        return "pipeline"
    # the dress rehearsal (three preset pipelines on tiny models, minutes of CPU) starts the lighter niced lane,
    # so that the many short unit tests, not it, fill the end of the session
    if item.nodeid.startswith(("tests/reliability/", "tests/e2e/test_rehearsal.py")):
        return "checks"
    return "unit"


def pytest_itemcollected(item):   # during collection, so that xdist's own modifyitems hook sees the marker
    item.add_marker(pytest.mark.xdist_group(_lane(item)))


def pytest_runtest_setup(item):
    # the pipeline lane is the critical path (base model, then the oracle trained for as many epochs, then every
    # job after them): the niced lanes, whose tests are independent, run at a lower CPU priority and fill what the
    # other lanes leave idle. Subprocesses inherit the niceness; it only matters while lanes run side by side.
    if XDIST_WORKER and _lane(item) in NICED_LANES and os.getpriority(os.PRIO_PROCESS, 0) < NICED_LANE_NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICED_LANE_NICE)


def pytest_collection_modifyitems(config, items):
    # the seeded lane: the SLURM module first and in one piece (its cluster is module-scoped; its pipeline test
    # mostly waits on the cluster), the other seeded runs after it (stable sort: the collection order otherwise)
    items.sort(key=lambda item: _lane(item) == "seeded" and "tests/slurm/" not in item.nodeid)


@pytest.hookimpl(trylast=True)   # after xdist's hook: its groups must be in the node ids, or the lanes are lost
def pytest_collection_finish(session):
    if getattr(session.config.option, "loadgroup", False) and any("@" not in i.nodeid for i in session.items):
        raise pytest.UsageError("--dist loadgroup: xdist did not group the tests into lanes (pytest >= 9 with "
                                "pytest-xdist 3.8 ignores its groups; pyproject.toml pins pytest < 9)")

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
    work on the suite itself; the Makefile never sets it). Under xdist the workers share one run in the common
    base temp dir: the first to ask makes it while holding a file lock, the others wait on the lock."""
    keep = os.environ.get("RU_RELIABILITY_REFERENCE")  # developing the suite: keep this run between sessions
    if not keep and XDIST_WORKER:   # both workers share one run: the base temp dir's parent is common to them
        keep = str(tmp_path_factory.getbasetemp().parent / "shared_reference_run")
    if not keep:
        return _make_reference_run(tmp_path_factory.mktemp("rel_reference"))
    top = Path(keep)
    top.mkdir(parents=True, exist_ok=True)
    with open(top / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # the other worker waits here while this one makes the run
        if (top / "reference.json").is_file():
            info = json.loads((top / "reference.json").read_text())
            return Run(top / "wf", (top / "reference.out").read_text(), (top / "reference.err").read_text(),
                       info["seconds"], top / "netguard.log", info["netns"])
        return _make_reference_run(top)


def _make_reference_run(top: Path) -> Run:
    import relkit  # tests/relkit.py; imported here so that unit-test sessions do not pay for it

    done = top / "reference.json"
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
