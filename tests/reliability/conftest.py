"""Session fixture of the reliability suite: ONE uninterrupted run of the miniature config, shared by the
determinism, network, planted-key, SIGKILL and SIGTERM tests (see relkit.py for why runs are shared)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

import relkit


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
    planted in the environment."""
    top = tmp_path_factory.mktemp("rel_reference")
    workdir = relkit.copy_workflow(top / "wf")
    guard_env, net_log = relkit.net_guard(top)
    prefix = relkit.unshare_prefix()
    env = relkit.snakemake_env({**guard_env, "OPENAI_API_KEY": relkit.PLANTED_KEY, "HF_TOKEN": relkit.PLANTED_KEY,
                                "RU_JUDGE_API_KEY": relkit.PLANTED_KEY})
    t0 = time.monotonic()
    res = relkit.run_snakemake(workdir, env=env, prefix=prefix, timeout=1800)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail("reference run of the miniature config failed:\n" + relkit.explain(res, workdir))
    return Run(workdir, res.stdout, res.stderr, seconds, net_log, bool(prefix))
