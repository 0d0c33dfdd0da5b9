"""Determinism on CPU.

Same seed, from scratch: the data and the base model are made again by the same `ru` commands the rules run
(`ru prepare-data` with the miniature config's benchmark section; `ru cache-model` with its model section, cut to
one epoch and run twice): byte-identical files and weights. The data is compared with the reference run's, which
made it from scratch too.

Same seed, pipeline: the SIGKILL run (conftest.killed_run: NPO and one relearning setting, seeded with the
reference's data and models, killed mid-unlearning and resumed) trains NPO again; its weights are byte-identical
to the reference run's and its metrics.csv rows equal the reference's rows for the same cells (timing and memory
rows excepted: they measure the machine, not the method).

Different seed: NPO with unlearning seed 1 (data and base model shared with the reference; run in the SIGTERM
test's workdir) gives other weights and other metrics than seed 0.
"""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

import relkit
from relkit import BENCH, NPO
from robust_unlearning.cli.main import main
from robust_unlearning.config import validate_config

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

NPO_SEED1 = NPO.replace("seed~0", "seed~1")


def _files(root):
    """{path: bytes} of every file under ``root`` but the marker Snakemake puts in a directory output."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".snakemake_timestamp"}


def test_same_seed_makes_byte_identical_data_and_base_model_from_scratch(reference_run, tmp_path):
    cfg = validate_config(relkit.mini_config())
    data = tmp_path / "data"
    assert main(["prepare-data", "--benchmark", json.dumps(cfg["benchmark"]), "--out", str(data)]) == 0
    assert _files(data) == _files(reference_run.workdir / BENCH / "data")

    model = copy.deepcopy(cfg["model"])
    model["train"]["epochs"] = 1        # one epoch shows any seed leak (init, data order, tokenizer) as well as 60
    weights = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["cache-model", "--model", json.dumps(model), "--data", str(data), "--role", "base",
                     "--out", str(out), "--threads", "1"]) == 0
        weights.append((out / "model.safetensors").read_bytes())
        assert (out / "tokenizer.json").read_bytes() == (tmp_path / "a" / "tokenizer.json").read_bytes()
    assert weights[0] == weights[1]


def test_same_seed_gives_identical_weights_and_metrics_in_the_pipeline(reference_run, killed_run):
    a, b = reference_run.workdir, killed_run.workdir
    assert b != a and killed_run.rerun.returncode == 0
    assert (b / BENCH / NPO / "model" / "model.safetensors").read_bytes() == \
        (a / BENCH / NPO / "model" / "model.safetensors").read_bytes()
    got = relkit.comparable(relkit.read_tidy(b))
    want = relkit.comparable(relkit.read_tidy(a), relkit.cells_of(got))
    assert len(got) > 50
    pd.testing.assert_frame_equal(got, want)


def test_a_different_seed_changes_the_metrics(reference_run, sigterm_run):
    """NPO with unlearning seed 1 (run beside the SIGTERM test's seed 0, same data and base model)."""
    ref, wd = reference_run.workdir, sigterm_run.workdir
    assert sigterm_run.rerun.returncode == 0
    m1 = json.loads((wd / sigterm_run.seed1_eval).read_text())["metrics"]
    m0 = json.loads((ref / BENCH / "eval" / NPO / "none" / "default" / "metrics.json").read_text())["metrics"]
    assert set(m0) == set(m1) and len(m0) > 5
    differ = sorted(k for k in m0 if m0[k] != m1[k])
    assert len(differ) >= 3, (m0, m1)
    w0 = (ref / BENCH / NPO / "model" / "model.safetensors").read_bytes()
    w1 = (wd / BENCH / NPO_SEED1 / "model" / "model.safetensors").read_bytes()
    assert w0 != w1
