"""Determinism on CPU: a second run FROM SCRATCH (data generated, base model and oracle trained again) with the
same seeds writes bit-identical data and weights and the same metrics.csv rows as the reference run; a different
unlearning seed changes the unlearned model and its metrics.

Run B keeps the miniature config's benchmark, model and unlearning settings and shrinks only the grid (NPO, one
relearning setting) to fit the test budget; its cells are a subset of the reference's and are compared row by
row (timing and memory rows excepted: they measure the machine, not the method)."""
from __future__ import annotations

import pandas as pd
import pytest

import relkit
from relkit import BENCH, MINI_METHODS, NPO, RELEARN_10

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

NPO_SEED1 = NPO.replace("seed~0", "seed~1")


@pytest.fixture(scope="module")
def run_b(reference_run, tmp_path_factory):
    cfg = relkit.variant(methods={"npo": MINI_METHODS["npo"]}, attacks=RELEARN_10, **{"unlearning.seeds": [0, 1]})
    wd = relkit.copy_workflow(tmp_path_factory.mktemp("rel_determinism") / "wf", cfg)
    res = relkit.run_snakemake(wd, timeout=1800)
    if res.returncode != 0:
        pytest.fail("determinism run B failed:\n" + relkit.explain(res, wd))
    return wd


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_data_weights_and_metrics(reference_run, run_b):
    ref = reference_run.workdir
    assert _files(run_b / BENCH / "data") == _files(ref / BENCH / "data")
    for model in ("models/base", "models/retrain", f"{NPO}/model"):
        a = (run_b / BENCH / model / "model.safetensors").read_bytes()
        assert a == (ref / BENCH / model / "model.safetensors").read_bytes(), model
    got = relkit.comparable(relkit.read_tidy(run_b))
    got = got[got["model_id"] != NPO_SEED1].reset_index(drop=True)
    assert set(got["status"]) == {"ok"}
    want = relkit.comparable(relkit.read_tidy(ref), relkit.cells_of(got))
    assert len(relkit.cells_of(got)) == 3 + 1             # base, retrain, npo clean + npo relearned
    pd.testing.assert_frame_equal(got, want)


def test_a_different_seed_changes_the_metrics(run_b):
    df = relkit.comparable(relkit.read_tidy(run_b))
    seed0 = df[df["model_id"] == NPO].set_index(["attack", "attack_params", "metric"])["value"]
    seed1 = df[df["model_id"] == NPO_SEED1].set_index(["attack", "attack_params", "metric"])["value"]
    assert set(seed0.index) == set(seed1.index) and len(seed0) > 5
    differ = [k for k in seed0.index if seed0[k] != seed1[k]]
    assert len(differ) >= 3, (seed0, seed1)
    w0 = (run_b / BENCH / NPO / "model" / "model.safetensors").read_bytes()
    w1 = (run_b / BENCH / NPO_SEED1 / "model" / "model.safetensors").read_bytes()
    assert w0 != w1
