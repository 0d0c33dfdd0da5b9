"""The Makefile keeps the default, the tests and the rehearsal offline, while the targets that must download (the
paper presets: `make preset`, `make slurm`) run with the caller's own Hub setting: online from a plain shell,
offline where the caller's shell says so (a local mirror or a pre-filled cache)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _plan(target: list[str], **hub: str) -> str:
    """The shell lines `make -n` would run, from a shell with ``hub`` (and no other HF_*OFFLINE variable)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MAKEFLAGS",
                                                          "MFLAGS", "MAKELEVEL")}
    env.update(hub)
    res = subprocess.run(["make", "-n", *target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _snakemake_line(text: str) -> str:
    return next(line for line in text.splitlines() if "bin/snakemake" in line)


@pytest.mark.parametrize("target", [["preset", "PRESET=muse_news"], ["slurm", "PRESET=wmdp_bio"]])
def test_download_targets_use_the_callers_hub_setting(target):
    assert _snakemake_line(_plan(target)).startswith("env HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 ")
    assert _snakemake_line(_plan(target, HF_HUB_OFFLINE="1")).startswith(
        "env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 ")       # datasets follow the hub unless set apart
    assert _snakemake_line(_plan(target, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="0")).startswith(
        "env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=0 ")


def test_the_default_run_stays_offline():
    """`make run` has no prefix: it inherits the Makefile's exported HF_HUB_OFFLINE=1, whatever the caller says."""
    line = _snakemake_line(_plan(["run"], HF_HUB_OFFLINE="0"))
    assert not line.startswith("env ")
    text = (ROOT / "Makefile").read_text()
    assert "export HF_HUB_OFFLINE := 1" in text and "export HF_DATASETS_OFFLINE := 1" in text
