"""The dress rehearsal on CPU (docs/cluster.md, "Dress rehearsal on CPU"): `make rehearsal` in a temp copy of the
workflow runs the three paper presets (workflow/presets/{muse_news,muse_books,wmdp_bio}.yaml) end to end through
the same rules and the default profile, each with its overlay (workflow/presets/rehearsal/<preset>.yaml) laid over
it: the model swapped for a tiny random one of the same architecture family, written into an HF hub cache in the
hub's own layout at the presets' pinned commits (tests/fixtures/make_hub_models.py), the data for the hub-format
fixtures, bfloat16 and gradient checkpointing as the presets have them, LoRA in the muse_news one. The SLURM
profile plans each of them first. Then every headline metric of each benchmark is in its metrics.csv: a number
where it can be computed, a visible `missing` row with its reason where it cannot."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import relkit
from robust_unlearning.config import validate_config
from robust_unlearning.config.grid import attack_settings, unlearn_runs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = relkit.ROOT
#: preset -> (benchmark name, the architecture its model must have)
PRESETS = {"muse_news": ("muse_news", "LlamaForCausalLM"), "muse_books": ("muse_books", "LlamaForCausalLM"),
           "wmdp_bio": ("wmdp_dialogue", "MistralForCausalLM")}
LORA_PRESET = "muse_news"
#: the headline metrics of each benchmark on every clean model (docs/evaluation.md): MUSE's VerbMem, KnowMem
#: (forget and retain), PrivLeak and the Unlearn Score; WMDP's forget (WMDP-bio) and retain (MMLU) accuracies, the
#: Unlearn Score; and, per prompt attack, its ASR
MUSE_HEADLINE = ("forget_verbmem", "forget_knowmem", "retain_knowmem", "privleak", "unlearn_score")
WMDP_HEADLINE = ("forget_mcq_acc_letter", "retain_mcq_acc_letter", "unlearn_score")


def merged_config(preset: str) -> dict:
    """The preset with its overlay laid over it, as Snakemake merges two --configfile files (dicts key by key)."""
    def merge(base, over):
        for k, v in over.items():
            base[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    cfg = yaml.safe_load((ROOT / "workflow" / "presets" / f"{preset}.yaml").read_text())
    return validate_config(merge(cfg, yaml.safe_load((ROOT / "workflow" / "presets" / "rehearsal" /
                                                      f"{preset}.yaml").read_text())))


def _configfiles(preset: str) -> list[str]:
    return ["--configfile", f"workflow/presets/{preset}.yaml", f"workflow/presets/rehearsal/{preset}.yaml"]


def _job_stats(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run: {rule: count}."""
    block = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """A copy of the workflow with the Makefile and the fixture builder; the SLURM profile's plans of the three
    rehearsals; then `make rehearsal` (CORES=2, this checkout's venv), timed."""
    wd = relkit.copy_workflow(tmp_path_factory.mktemp("rehearsal") / "wf")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, wd / name)
    shutil.copytree(ROOT / "tests" / "fixtures", wd / "tests" / "fixtures",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = relkit.snakemake_env({"HF_HUB_CACHE": str(wd / "results" / "rehearsal" / "fixtures" / "hf-cache")})
    plans = {}
    for preset in PRESETS:
        res = subprocess.run([str(relkit.BIN / "snakemake"), "-n", "--workflow-profile", "workflow/profiles/slurm",
                              "--jobs", "1", *_configfiles(preset)], cwd=wd, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"SLURM plan of {preset}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        plans[preset] = res.stdout + res.stderr
    venv = relkit.BIN.parent
    t0 = time.monotonic()
    # -o: never remake the venv's install stamp (this is the checkout's venv, not the copy's)
    res = subprocess.run(["make", "-o", f"{venv}/.installed", "rehearsal", f"VENV={venv}", "CORES=2"], cwd=wd,
                         env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t0
    (wd / "make_rehearsal.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        logs = sorted((wd / "results" / "rehearsal").rglob("logs/**/*.log"), key=lambda p: p.stat().st_mtime)[-3:]
        pytest.fail(f"make rehearsal failed ({seconds:.0f} s):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}\n" +
                    "\n".join(f"== {p}\n{p.read_text(errors='replace')[-2500:]}" for p in logs))
    print(f"make rehearsal: {seconds:.0f} s")
    return wd, plans, seconds


def _table(wd: Path, preset: str) -> pd.DataFrame:
    path = wd / "results" / "rehearsal" / preset / PRESETS[preset][0] / "tables" / "metrics.csv"
    assert path.is_file(), path
    return pd.read_csv(path, keep_default_na=False)


def _clean_models(cfg: dict) -> list[str]:
    return ["models/base"] + [r.model_id for r in unlearn_runs(cfg)]


def _assert_cell(df: pd.DataFrame, model_id: str, metric: str, attack: str = "none", params: str = "default",
                 must_be_number: bool = False):
    rows = df[(df.model_id == model_id) & (df.metric == metric) & (df.attack == attack) &
              (df.attack_params == params)]
    assert len(rows) == 1, (model_id, metric, attack, params, rows)
    row = rows.iloc[0]
    if row.status == "ok":
        assert math.isfinite(float(row.value)), row
    else:   # visible, with its reason
        assert not must_be_number, row
        assert row.status == "missing" and str(row.note).startswith("not computable"), row
    return row


def test_the_slurm_profile_plans_every_job_of_each_rehearsal(rehearsal):
    """The plan of the SLURM profile (executor slurm, one GPU per model job) has the grid's jobs."""
    _, plans, _ = rehearsal
    for preset, text in plans.items():
        cfg = merged_config(preset)
        stats = _job_stats(text)
        runs, attacks = unlearn_runs(cfg), attack_settings(cfg)
        assert stats.get("unlearn") == len(runs), (preset, stats)
        assert stats.get("cache_base_model") == 1 and stats.get("aggregate") == 1, (preset, stats)
        relearn = [a for a in attacks if a.attack == "relearn"]
        assert stats.get("attack_model") == len(relearn) * (len(runs) + 1), (preset, stats)
        assert stats.get("train_probe") == (1 if any(r.method == "prism" for r in runs) else None), (preset, stats)


def test_each_rehearsal_has_every_headline_metric_of_its_benchmark(rehearsal):
    wd, _, _ = rehearsal
    for preset, (bench, _) in PRESETS.items():
        cfg, df = merged_config(preset), _table(wd, preset)
        assert set(df.benchmark) == {bench}
        assert not (df.status.isin(["failed", "diverged"])).any(), df[df.status != "ok"]
        models = _clean_models(cfg)
        if bench.startswith("muse"):
            for m in models:
                for metric in ("forget_verbmem", "forget_knowmem", "retain_knowmem", "privleak"):
                    _assert_cell(df, m, metric, must_be_number=True)
                # the MUSE presets have no retrain oracle: PrivLeak uses the published AUC_retrain, and says so
                row = _assert_cell(df, m, "privleak", must_be_number=True)
                assert "published" in row.note, row
                _assert_cell(df, m, "unlearn_score")
        else:
            prompt_attacks = [a for a in attack_settings(cfg) if a.attack in ("prefill", "multi_turn")]
            assert {a.attack for a in prompt_attacks} == {"prefill", "multi_turn"}
            for m in models:
                for metric in ("forget_mcq_acc_letter", "retain_mcq_acc_letter"):
                    _assert_cell(df, m, metric, must_be_number=True)
                _assert_cell(df, m, "unlearn_score")
                for a in prompt_attacks:
                    _assert_cell(df, m, "asr", a.attack, a.params)
            # prefill items carry reference answers: a number; PRISM's multi-turn file has none, as the fixture
            assert (df[(df.attack == "prefill") & (df.metric == "asr")].status == "ok").all()
        # the Unlearn Score is a number wherever its components are (the target model included)
        us = df[(df.metric == "unlearn_score") & (df.attack == "none")]
        assert (us.status == "ok").all(), us
        for a in attack_settings(cfg):
            if a.attack == "relearn":   # every attacked model, relearned and evaluated
                for m in models:
                    metric = MUSE_HEADLINE[0] if bench.startswith("muse") else WMDP_HEADLINE[0]
                    _assert_cell(df, m, metric, "relearn", a.params, must_be_number=True)


def test_the_models_are_the_fixture_families_loaded_from_the_hub_cache(rehearsal):
    wd, _, _ = rehearsal
    for preset, (bench, arch) in PRESETS.items():
        cfg = merged_config(preset)
        base = wd / "results" / "rehearsal" / preset / bench / "models" / "base"
        assert json.loads((base / "config.json").read_text())["architectures"] == [arch]
        source = json.loads((base / "source.json").read_text())
        assert source["source"] == "hub" and source["resolved_revision"] == cfg["model"]["revision"], source
        tok = json.loads((base / "tokenizer_config.json").read_text())
        assert tok["pad_token"] == tok["eos_token"]              # model.pad_token: eos
        if bench == "wmdp_dialogue":   # the dialogue setting goes through Mistral's chat template
            template = tok.get("chat_template") or (base / "chat_template.jinja").read_text()
            assert "[INST]" in template
        else:
            assert source["tokenizer"]["id"] == cfg["model"]["tokenizer"]


def test_every_unlearning_run_trained_in_bf16_with_gradient_checkpointing(rehearsal):
    wd, _, _ = rehearsal
    for preset, (bench, _) in PRESETS.items():
        cfg = merged_config(preset)
        train_cfg = cfg["unlearning"]["train"]
        assert train_cfg["dtype"] == "bfloat16" and train_cfg["gradient_checkpointing"] is True
        for run in unlearn_runs(cfg):
            info = json.loads((wd / "results" / "rehearsal" / preset / bench / run.model_id / "run.json").read_text())
            assert info["status"] == "ok" and info["steps"] == info["total_steps"] > 0, (run.model_id, info["status"])
            assert info["cost"]["dtype"] == "torch.bfloat16" and info["cost"]["device"] == "cpu", info["cost"]
            train = info["provenance"]["config"]["train"]
            assert train["gradient_checkpointing"] is True, (run.model_id, train)
            assert (train.get("lora") is not None) == (preset == LORA_PRESET), (run.model_id, train.get("lora"))


def test_the_lora_variant_trained_the_adapters_and_only_them(rehearsal):
    """The kept resumable state (checkpoint_every: 1, keep_checkpoint: true) holds the trainable tensors after the
    last checkpointed step: LoRA's A and B of every target projection in every layer, no base weight, and B, which
    peft starts at zero, moved."""
    wd, _, _ = rehearsal
    cfg = merged_config(LORA_PRESET)
    bench = PRESETS[LORA_PRESET][0]
    lora = cfg["unlearning"]["train"]["lora"]
    n_layers = json.loads((wd / "results" / "rehearsal" / LORA_PRESET / bench / "models" / "base" /
                           "config.json").read_text())["num_hidden_layers"]
    for run in unlearn_runs(cfg):
        state = wd / "results" / "rehearsal" / LORA_PRESET / bench / "checkpoints" / run.model_id / "state" / "state.pt"
        trainable = torch.load(state, weights_only=True)["trainable"]
        assert all(".lora_A." in n or ".lora_B." in n for n in trainable), (run.model_id, list(trainable)[:5])
        targets = lora.get("target_modules") or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"]
        assert len(trainable) == 2 * len(targets) * n_layers, (run.model_id, len(trainable))
        assert all(t.shape[0] == lora["r"] for n, t in trainable.items() if ".lora_A." in n)
        moved = [n for n, t in trainable.items() if ".lora_B." in n and float(t.float().abs().max()) > 0]
        assert len(moved) == len(targets) * n_layers, (run.model_id, moved)


def test_a_second_make_rehearsal_has_nothing_to_do(rehearsal):
    """The trees are complete: the same command plans no job (the fixtures are rebuilt only when their inputs
    change)."""
    wd, _, _ = rehearsal
    venv = relkit.BIN.parent
    env = relkit.snakemake_env({"HF_HUB_CACHE": str(wd / "results" / "rehearsal" / "fixtures" / "hf-cache")})
    res = subprocess.run(["make", "-o", f"{venv}/.installed", "rehearsal", f"VENV={venv}", "CORES=2",
                          "SNAKE_ARGS=-n"], cwd=wd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "make_hub_models.py" not in out, out[-2000:]
    assert out.count("Nothing to be done") == len(PRESETS), out[-3000:]
