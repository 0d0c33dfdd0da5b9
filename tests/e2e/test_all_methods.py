"""Every unlearning method and every attack through `ru` and Snakemake end to end: the second miniature config
(tests/e2e/all_methods_config.yaml: the methods the first one lacks, every attack), run once per session
(``all_methods_run``, tests/conftest.py), with GA, GradDiff and NPO from the reference run of the first. It proves
the paths, not the science: each method's job finishes with its steps done, PRISM's probe rule runs, each
attack's job runs and its evaluation lands in the aggregated table."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

import relkit
from robust_unlearning.config import validate_config
from robust_unlearning.config.grid import attack_settings, unlearn_runs

METHODS = {"ga", "graddiff", "npo", "simnpo", "rmu", "sam_npo", "task_vector", "prism"}
ATTACKS = {"relearn", "prefill", "jailbreak_templates", "multi_turn", "gcg", "latent", "direction", "quantize",
           "weight_noise"}


def _config() -> dict:   # the file tests/conftest.py's all_methods_run runs
    return yaml.safe_load((relkit.ROOT / "tests" / "e2e" / "all_methods_config.yaml").read_text())


def test_the_config_covers_everything_and_can_reuse_the_reference_data_and_models():
    """Cheap (no run): with the miniature config, the config has every method once, and every attack once; the
    sections that decide the data and models are the miniature config's (the run is seeded with the reference
    run's)."""
    cfg = _config()
    mini = relkit.mini_config()
    assert cfg["benchmark"] == mini["benchmark"] and cfg["model"] == mini["model"]
    valid = validate_config(cfg)
    runs = unlearn_runs(valid)
    in_mini = [r.method for r in unlearn_runs(validate_config(mini))]
    assert sorted(in_mini) == ["ga", "graddiff", "npo"]
    assert sorted(r.method for r in runs) == sorted(METHODS - set(in_mini))      # each of the rest exactly once
    settings = attack_settings(valid)
    assert sorted(a.attack for a in settings) == sorted(ATTACKS)
    prism = [r for r in runs if r.method == "prism"]
    assert all(prism[0].faces(a) for a in ATTACKS)


@pytest.fixture(scope="module")
def table(all_methods_run):
    df = pd.read_csv(all_methods_run.workdir / relkit.BENCH / "tables" / "metrics.csv", keep_default_na=False)
    print(f"all-methods run: {all_methods_run.seconds:.0f} s")
    return all_methods_run.workdir / relkit.BENCH, df


@pytest.mark.slow
@pytest.mark.e2e
def test_every_method_ran_its_steps_and_was_evaluated(table, reference_run):
    """This run's methods, and the miniature config's (GA, GradDiff, NPO) in the reference run."""
    bench, df = table
    ref_bench = reference_run.workdir / relkit.BENCH
    ref_df = pd.read_csv(ref_bench / "tables" / "metrics.csv", keep_default_na=False)
    seen = set()
    for config, where, rows_of, extra in ((_config(), bench, df, ("over_refusal",)),
                                          (relkit.mini_config(), ref_bench, ref_df, ())):
        cfg = validate_config(config)
        steps = cfg["unlearning"]["train"]["steps"]
        for run in unlearn_runs(cfg):
            seen.add(run.method)
            info = json.loads((where / run.model_id / "run.json").read_text())
            assert info["status"] == "ok" and info["steps"] == steps, (run.model_id, info.get("status"))
            rows = rows_of[(rows_of.model_id == run.model_id) & (rows_of.attack == "none")]
            for metric in ("forget_mcq_acc", "retain_mcq_acc", "forget_knowmem", "forget_verbmem", "privleak",
                           "repr_margin", *extra):
                got = rows[rows.metric == metric]
                assert len(got) == 1 and got.iloc[0]["status"] == "ok", (run.model_id, metric)
                assert math.isfinite(float(got.iloc[0]["value"])), (run.model_id, metric)
    assert seen == METHODS
    assert any((bench / "probe").glob("seed~0/*")), "PRISM's probe rule did not run"


@pytest.mark.slow
@pytest.mark.e2e
def test_every_attack_ran_against_prism_and_was_evaluated(table):
    bench, df = table
    cfg = validate_config(_config())
    prism = next(r.model_id for r in unlearn_runs(cfg) if r.method == "prism")
    for a in attack_settings(cfg):
        rows = df[(df.model_id == prism) & (df.attack == a.attack) & (df.attack_params == a.params)]
        # numbers that cannot exist for this cell by definition (checked below) are not the attack's results
        rows = rows[~rows["note"].str.startswith("not computable")]
        assert len(rows) > 0, a.attack
        assert set(rows["status"]) == {"ok"}, (a.attack, rows[rows["status"] != "ok"][["metric", "note"]])
        values = [float(v) for v in rows["value"] if v not in ("", "NA", "nan")]
        assert values and all(math.isfinite(v) for v in values), a.attack
    # the only `missing` rows are numbers that cannot be computed by definition (e.g. the Unlearn Score of an
    # attacked copy evaluated on forget MCQ only), each with its reason; no expected cell is absent
    missing = df[df["status"] == "missing"]
    assert missing["note"].str.startswith("not computable").all(), missing[["model_id", "attack", "metric", "note"]]
