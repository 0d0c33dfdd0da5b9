"""Config schema, defaults and grid expansion: bad configs fail with a message naming the key."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from robust_unlearning.config import (ConfigValidationError, format_value, param_string, parse_param_string,
                                      unlearn_runs, validate_config)
from robust_unlearning.config.grid import attack_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_config():
    return yaml.safe_load((ROOT / "tests" / "e2e" / "mini_config.yaml").read_text())


def test_default_and_mini_configs_are_valid(base_config):
    validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    cfg = validate_config(base_config)
    assert cfg["results_dir"] == "results"            # default filled in
    assert cfg["model"]["allow_pickle"] is False      # nested default filled in


def test_yaml_scientific_strings_become_numbers(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["unlearning"]["methods"]["npo"]["lr"] = ["1e-4"]  # PyYAML reads 1e-4 as a string
    out = validate_config(cfg)
    assert out["unlearning"]["methods"]["npo"]["lr"] == [1e-4]


def _set(cfg, dotted, value):
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _delete(cfg, dotted):
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]


BAD = [
    # (mutation, key that the message must name)
    (lambda c: _set(c, "bogus_top", 1), "bogus_top"),
    (lambda c: _set(c, "benchmark.colour", "red"), "benchmark.colour"),
    (lambda c: _set(c, "benchmark.name", "mmlu_pro"), "benchmark.name"),
    (lambda c: _set(c, "benchmark.size", 3), "benchmark.size"),
    (lambda c: _set(c, "model.source", "ftp"), "model.source"),
    (lambda c: _set(c, "model.train.lr", -1.0), "model.train.lr"),
    (lambda c: _set(c, "model.train.epochs", "many"), "model.train.epochs"),
    (lambda c: _set(c, "unlearning.seeds", [0, 0]), "unlearning.seeds"),
    (lambda c: _set(c, "unlearning.seeds", []), "unlearning.seeds"),
    (lambda c: _set(c, "unlearning.methods", {}), "unlearning.methods"),
    (lambda c: _delete(c, "unlearning.methods"), "unlearning.methods"),
    (lambda c: _set(c, "unlearning.methods.npo.beta", [0.1, 0.1]), "unlearning.methods.npo.beta"),
    (lambda c: _set(c, "unlearning.methods.npo.beta", []), "unlearning.methods.npo.beta"),
    (lambda c: _set(c, "unlearning.methods.npo.lr", [-1e-3]), "unlearning.methods.npo.lr"),
    (lambda c: _set(c, "unlearning.methods.npo.beta", [0.0]), "unlearning.methods.npo.beta"),
    (lambda c: _set(c, "unlearning.methods.ga.rho", [0.01]), "unlearning.methods.ga.rho"),
    (lambda c: _set(c, "unlearning.methods.teleport", {"lr": [1e-3]}), "unlearning.methods.teleport"),
    (lambda c: _set(c, "attacks.enabled", ["telepathy"]), "attacks.enabled"),
    (lambda c: _set(c, "attacks.gcg", {"steps": [5]}), "attacks.gcg"),
    (lambda c: _set(c, "attacks.relearn.steps", [10, 10]), "attacks.relearn.steps"),
    (lambda c: _set(c, "attacks.targets", ["nobody"]), "attacks.targets"),
    (lambda c: _set(c, "model.source", "hub"), "model.name_or_path"),
]


@pytest.mark.parametrize("mutate,key", BAD, ids=[k for _, k in BAD])
def test_bad_config_names_the_key(base_config, mutate, key):
    cfg = copy.deepcopy(base_config)
    mutate(cfg)
    with pytest.raises(ConfigValidationError) as err:
        validate_config(cfg)
    assert key in str(err.value), str(err.value)


def test_format_value_and_param_strings():
    assert format_value(1e-4) == "1e-4"
    assert format_value(0.1) == "0.1"
    assert format_value(2.5e-5) == "2.5e-5"
    assert format_value(10) == "10"
    assert format_value(True) == "true"
    assert param_string({"lr": 1e-4, "beta": 0.1}) == "beta~0.1_lr~1e-4"
    assert param_string({}) == "default"
    assert parse_param_string("gcd-scope~none_lr~1e-4") == {"gcd_scope": "none", "lr": "1e-4"}
    assert format_value("per_tensor") == "per-tensor"
    with pytest.raises(ValueError):
        format_value("a/b")


def test_grid_expansion_lists_are_axes_scalars_fixed(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["unlearning"]["methods"]["npo"] = {"lr": [1e-3, 5e-4], "beta": [0.1], "retain_loss": "gdr"}
    cfg["unlearning"]["seeds"] = [0, 1]
    runs = [r for r in unlearn_runs(validate_config(cfg)) if r.method == "npo"]
    assert len(runs) == 4
    assert {r.model_id for r in runs} == {f"unlearn/npo/beta~0.1_lr~{lr}/seed~{s}"
                                          for lr in ("1e-3", "5e-4") for s in (0, 1)}
    assert all(r.settings["retain_loss"] == "gdr" for r in runs)
    cfg["attacks"]["relearn"]["steps"] = [10, 50]
    assert [a.params for a in attack_settings(validate_config(cfg))] == ["fraction~1_steps~10", "fraction~1_steps~50"]


def test_per_attack_targets_override_the_global_list(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["attacks"]["relearn"]["targets"] = ["npo"]
    settings = attack_settings(validate_config(cfg))
    assert {s.targets for s in settings} == {("npo",)}
    assert all("targets" not in s.settings for s in settings)
    cfg["attacks"]["relearn"]["targets"] = ["nobody"]
    with pytest.raises(ConfigValidationError, match="attacks.relearn.targets"):
        validate_config(cfg)


def test_attack_with_limits_which_attacks_a_grid_faces(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["unlearning"]["methods"]["npo"] = [{"lr": [1e-3], "beta": [0.02]},
                                           {"lr": [1e-3], "beta": [0.5], "attack_with": ["relearn"]}]
    runs = {r.params: r for r in unlearn_runs(validate_config(cfg)) if r.method == "npo"}
    assert runs["beta~0.02_lr~1e-3"].faces("gcg") and runs["beta~0.5_lr~1e-3"].faces("relearn")
    assert not runs["beta~0.5_lr~1e-3"].faces("gcg")
    assert "attack_with" not in runs["beta~0.5_lr~1e-3"].settings
    cfg["unlearning"]["methods"]["npo"][1]["attack_with"] = ["gcg"]  # not enabled
    with pytest.raises(ConfigValidationError, match="attack_with"):
        validate_config(cfg)


def test_attack_with_can_name_settings_of_an_attack(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["attacks"]["relearn"].update(steps=[5, 20], fraction=[0.25, 1.0])
    cfg["unlearning"]["methods"]["npo"] = [{"lr": [1e-3], "beta": [0.02]},
                                           {"lr": [1e-3], "beta": [0.5], "attack_with": ["relearn:steps=20"]}]
    cfg = validate_config(cfg)
    runs = {r.params: r for r in unlearn_runs(cfg) if r.method == "npo"}
    curve = [s.params for s in attack_settings(cfg) if s.attack == "relearn"]
    assert sorted(curve) == ["fraction~0.25_steps~20", "fraction~0.25_steps~5", "fraction~1_steps~20",
                             "fraction~1_steps~5"]
    one = runs["beta~0.5_lr~1e-3"]
    assert [p for p in curve if one.faces("relearn", p)] == [p for p in curve if p.endswith("steps~20")]
    assert one.faces("relearn") and not one.faces("gcg")            # the attack itself, any setting
    assert all(runs["beta~0.02_lr~1e-3"].faces("relearn", p) for p in curve)
    sel = copy.deepcopy(cfg)
    sel["unlearning"]["methods"]["npo"][1]["attack_with"] = ["relearn:steps=20,fraction=1"]
    only = {r.params: r for r in unlearn_runs(validate_config(sel))}["beta~0.5_lr~1e-3"]
    assert [p for p in curve if only.faces("relearn", p)] == ["fraction~1_steps~20"]
    for bad, msg in ((["relearn:steps=7"], "selects no setting"), (["relearn:steps"], "key=value"),
                     (["gcg:steps=20"], "not in attacks.enabled")):
        sel["unlearning"]["methods"]["npo"][1]["attack_with"] = bad
        with pytest.raises(ConfigValidationError, match=rf"unlearning\.methods\.npo\.attack_with.*{msg}"):
            validate_config(sel)


def test_under_attack_evaluation_overrides_are_validated(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["evaluation"]["under_attack"] = {"metrics": ["mcq_cloze"]}
    validate_config(cfg)
    cfg["evaluation"]["under_attack"] = {"colour": "red"}
    with pytest.raises(ConfigValidationError, match="evaluation.under_attack"):
        validate_config(cfg)


def test_cached_validation_runs_the_deep_checks_once_per_config(base_config, tmp_path, monkeypatch):
    """The workflow's validation (every Snakemake start): deep checks once per config and code version, then only
    the schema; a config that fails leaves no marker and fails every time, naming the key."""
    from robust_unlearning.config import validate as v

    deep_calls = []
    real = v._validate_semantics
    monkeypatch.setattr(v, "_validate_semantics", lambda cfg: (deep_calls.append(1), real(cfg)))
    cache = tmp_path / "validated"
    first = v.validate_config_cached(base_config, cache)
    again = v.validate_config_cached(base_config, cache)
    assert first == again == v.validate_config(base_config) and len(deep_calls) == 2   # 1 cached + 1 direct
    assert len(list(cache.iterdir())) == 1

    other = copy.deepcopy(base_config)
    other["unlearning"]["seeds"] = [0, 1]
    v.validate_config_cached(other, cache)
    assert len(deep_calls) == 3 and len(list(cache.iterdir())) == 2

    # the plugins in force are part of the verdict: naming one, or editing it, validates deeply again
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("# registers nothing\n")
    monkeypatch.setenv("RU_PLUGINS", str(plugin))
    v.validate_config_cached(other, cache)
    plugin.write_text("# registers nothing, edited\n")
    v.validate_config_cached(other, cache)
    assert len(deep_calls) == 5 and len(list(cache.iterdir())) == 4
    monkeypatch.delenv("RU_PLUGINS")
    deep_calls.clear()

    bad = copy.deepcopy(base_config)
    bad["unlearning"]["methods"]["npo"] = {"lr": [1e-3], "colour": "red"}
    for _ in range(2):
        with pytest.raises(ConfigValidationError, match="unlearning.methods.npo"):
            v.validate_config_cached(bad, cache)
    assert len(deep_calls) == 2 and len(list(cache.iterdir())) == 4
