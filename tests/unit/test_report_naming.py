"""Report vocabulary: parameter strings, model ids, method labels, seed pooling, loss-landscape input."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from robust_unlearning.report.common import (
    drop_param, fmt_mean_std, format_params, method_label, parse_model_id, parse_params, pool_seeds, setting_label)
from robust_unlearning.report.figures import load_landscape
from robust_unlearning.report.tables import Table, tex_escape
from robust_unlearning.utils.io import DataFormatError


@pytest.mark.parametrize("text, expected", [
    ("fraction~0.5_steps~10", {"fraction": "0.5", "steps": "10"}),
    ("beta~0.1_retain-loss~gdr", {"beta": "0.1", "retain_loss": "gdr"}),
    ("gamma-max~0.05_rho~0.01", {"gamma_max": "0.05", "rho": "0.01"}),
    ("gcd-scope~per-tensor", {"gcd_scope": "per-tensor"}),
    ("lr~1e-4_steps~25", {"lr": "1e-4", "steps": "25"}),
    ("default", {}), ("-", {}), ("", {}),
])
def test_parse_params(text, expected):
    assert parse_params(text) == expected
    if expected:
        assert format_params(expected) == text


def test_drop_param_pools_noise_seeds():
    assert drop_param("seed~3_sigma~0.01", "seed") == "sigma~0.01"
    assert drop_param("seed~3", "seed") == "default"
    assert drop_param("sigma~0.01", "seed") == "sigma~0.01"


def test_parse_model_id():
    assert parse_model_id("models/base") == {"method": "base", "params": "-", "seed": "-", "checkpoint": "-"}
    assert parse_model_id("unlearn/npo/beta~0.1_lr~1e-3/seed~0") == {
        "method": "npo", "params": "beta~0.1_lr~1e-3", "seed": "0", "checkpoint": "-"}
    assert parse_model_id("odd/thing")["method"] == "odd/thing"  # kept, not dropped


@pytest.mark.parametrize("method, params, label", [
    ("npo", "beta~0.1_retain-loss~gdr", "NPO+GDR"), ("ga", "retain-loss~klr", "GA+KLR"), ("npo", "beta~0.1", "NPO"),
    ("sam_npo", "retain-loss~gdr", "SAM+NPO+GDR"), ("prism", "gcd~false", "PRISM"), ("base", "-", "Base"),
    ("retrain", "-", "Retrain"), ("task_vector", "default", "Task Vector"), ("new_thing", "default", "NEW+THING"),
])
def test_method_label(method, params, label):
    assert method_label(method, params) == label


def test_setting_label():
    assert setting_label("relearn", "fraction~0.5_steps~10") == "relearn steps=10 frac=0.5"
    assert setting_label("gcg", "default") == "GCG"


def test_pool_seeds_mean_std_and_status():
    df = pd.DataFrame({"g": ["a", "a", "b", "b", "c"], "value": [1.0, 3.0, 2.0, math.nan, math.nan],
                       "status": ["ok", "ok", "ok", "missing", "diverged"]})
    pooled = pool_seeds(df, ["g"]).set_index("g")
    assert pooled.loc["a", "mean"] == 2.0 and pooled.loc["a", "std"] == pytest.approx(math.sqrt(2))
    assert pooled.loc["a", "status"] == "ok" and pooled.loc["b", "status"] == "partial"
    assert pooled.loc["c", "n"] == 0 and pooled.loc["c", "status"] == "diverged"
    assert fmt_mean_std(20.0, 0.5) == "20.00 ± 0.50" and fmt_mean_std(0.3) == "0.300"


def test_table_renderers():
    t = Table("x", "A & B", ["Method", "US"], [["NPO+GDR", "0.5 ± 0.1"], ["a_b", "50%"]])
    md, tex = t.markdown(), t.latex()
    assert md.count("\n|") == 4 and "|:---|---:|" in md
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "{lr}" in tex
    assert "a\\_b & 50\\%" in tex and "0.5 $\\pm$ 0.1" in tex
    assert tex_escape("k~v") == "k\\textasciitilde{}v"


def test_load_landscape_shapes(tmp_path):
    single = tmp_path / "npo.json"
    single.write_text(json.dumps({"alpha": [0, 1], "loss": [1, 2]}))
    assert [(lab, sp) for lab, sp, _, _ in load_landscape(single)] == [("npo", "loss")]
    multi = tmp_path / "m.json"
    multi.write_text(json.dumps({"GA": {"alpha": [0, 1], "losses": {"forget": [1, 2], "retain": [3, 4]}}}))
    assert [(lab, sp) for lab, sp, _, _ in load_landscape(multi)] == [("GA", "forget"), ("GA", "retain")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"alpha": [0, 1, 2], "loss": [1, 2]}))
    with pytest.raises(DataFormatError, match="bad.json"):
        load_landscape(bad)
