"""The embedded default config.yaml, planned by Snakemake (``snakemake -n`` in an empty copy of the workflow):
the number of jobs of every rule equals the grid computed here from the config itself, so a rule that drops out
of the default DAG (an input function that stops asking for the probe, an attack no rule reaches, a model that is
no longer evaluated) fails this test. The expectation follows the stage descriptions in docs/architecture.md:
model attacks (relearn, quantize, weight_noise) write a model per attacked model, model-optimised prompts (gcg,
jailbreak_templates) an artefact per attacked model, the other input attacks one shared artefact per setting;
every model is evaluated clean and under each attack it faces."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import relkit  # noqa: E402

from robust_unlearning.config import validate_config  # noqa: E402
from robust_unlearning.config.grid import attack_settings, unlearn_runs  # noqa: E402

MODEL_ATTACKS = {"relearn", "quantize", "weight_noise"}          # a model copy per attacked model
PER_MODEL_PROMPTS = {"gcg", "jailbreak_templates"}                # an artefact optimised per attacked model
pytestmark = pytest.mark.slow                                     # a Snakemake process: ~25 s of CPU

EVERY_ATTACK = MODEL_ATTACKS | PER_MODEL_PROMPTS | {"prefill", "multi_turn", "latent", "direction"}


def expected_jobs(cfg: dict) -> dict[str, int]:
    """{rule: jobs} of a run from scratch, from the config alone."""
    runs = unlearn_runs(cfg)
    seeds = {r.seed for r in runs}
    synthetic = cfg["benchmark"]["name"] == "synthetic" and cfg["model"]["source"] == "train_tiny"
    models = ["models/base"] + (["models/retrain"] if synthetic else [])
    jobs = {"prepare_data": 1, "cache_base_model": 1, "unlearn": len(runs), "evaluate": len(models) + len(runs),
            "aggregate": 1, "all": 1}
    if synthetic:
        jobs["train_retrain_oracle"] = 1
    if any(r.method == "prism" for r in runs):
        jobs["train_probe"] = len(seeds)                          # one probe per unlearning seed
    for setting in attack_settings(cfg):
        attacked = (["models/base"] if "base" in setting.targets else []) + \
                   ([r.model_id for r in runs if r.faces(setting.attack)] if "unlearned" in setting.targets else [])
        if not attacked:
            continue
        jobs["evaluate"] += len(attacked)
        rule = ("attack_model" if setting.attack in MODEL_ATTACKS else
                "attack_prompt_model" if setting.attack in PER_MODEL_PROMPTS else "attack_shared")
        jobs[rule] = jobs.get(rule, 0) + (1 if rule == "attack_shared" else len(attacked))
    if cfg["report"]["loss_landscape"]:
        jobs["loss_landscape"] = len(models) + len(runs)
    return jobs


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory):
    """(validated default config, {rule: jobs} planned by snakemake -n for it)."""
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    wd = relkit.copy_workflow(tmp_path_factory.mktemp("default_plan") / "wf", raw)
    res = relkit.run_snakemake(wd, "-n", cores=2, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return validate_config(raw), relkit.planned_jobs(res.stdout + res.stderr)


def test_the_default_dag_has_every_rule_with_the_expected_job_count(default_plan):
    cfg, planned = default_plan
    assert planned == expected_jobs(cfg)


def test_the_default_config_exercises_every_method_and_attack(default_plan):
    """The default is the showcase: every method (PRISM with its probe rule) and every attack is in its DAG."""
    cfg, planned = default_plan
    assert {r.method for r in unlearn_runs(cfg)} == {"ga", "graddiff", "npo", "simnpo", "rmu", "sam_npo",
                                                     "task_vector", "prism"}
    assert {a.attack for a in attack_settings(cfg)} == EVERY_ATTACK
    assert planned.get("train_probe", 0) >= 1
    for rule in ("attack_model", "attack_prompt_model", "attack_shared"):
        assert planned.get(rule, 0) >= 1, rule
