"""Extending is one file and one entry: a toy method and a toy attack, each one file in tests/unit/plugins/,
registered through the public registries and run through `ru` (as the rules run it) on a tiny model.

The plugin files are the templates to copy (docs/architecture.md, "Adding a method" / "Adding an attack").
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robust_unlearning.data.formats import Benchmark
from robust_unlearning.data.synthetic import generate_world
from robust_unlearning.data.unlearning_sets import build_examples
from robust_unlearning.models.io import save_model
from robust_unlearning.plugins import PluginError, load_plugins, plugin_names

RU = str(Path(sys.executable).parent / "ru")
PLUGINS = Path(__file__).resolve().parent / "plugins"
TOY_METHOD = str(PLUGINS / "toy_method.py")
TOY_ATTACK = str(PLUGINS / "toy_attack.py")
MAX_LEN = 32


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "RU_PLUGINS"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _ru(args, log: Path, **env):
    """Run `ru` the way a rule does: stdout and stderr into one log file."""
    with open(log, "w") as fh:
        res = subprocess.run([RU, *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(**env), timeout=600)
    return res.returncode, log.read_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending")
    generate_world(root / "data", seed=0, size="tiny")
    return root


@pytest.fixture()
def base(world, micro_model, tiny_tokenizer):
    save_model(micro_model, tiny_tokenizer, world / "base")
    return world / "base"


def _ce(model, examples) -> float:
    """Mean next-token cross-entropy over every target token of ``examples``, one example at a time."""
    total, n = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            logits = model(input_ids=ids).logits[0, :-1]
            total += F.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum").item()
            n += int((labels[0, 1:] != -100).sum())
    return total / n


@pytest.mark.slow
def test_a_toy_method_from_one_file_runs_through_ru(world, base, micro_model, tiny_tokenizer, tmp_path):
    forget = build_examples(Benchmark(world / "data"), tiny_tokenizer, "forget", "raw", MAX_LEN)
    scale = 2.0
    # one optimizer step covers the whole forget set: the first logged loss is −scale · CE(base, forget)
    expected = -scale * _ce(micro_model, forget)
    out = tmp_path / "unlearn" / "toy_ascent" / "run"
    args = ["unlearn", "--method", "toy_ascent", "--settings", json.dumps({"lr": 1e-2, "scale": scale}),
            "--train", json.dumps({"steps": 2, "batch_size": len(forget), "max_len": MAX_LEN, "progress": False}),
            "--benchmark", '{"forget_source": "raw", "retain_source": "raw"}', "--data", str(world / "data"),
            "--model-dir", str(base), "--seed", "0", "--out", str(out), "--checkpoint-dir", str(tmp_path / "ck"),
            "--threads", "1"]
    rc, log = _ru(args, tmp_path / "unlearn.log", RU_PLUGINS=TOY_METHOD)   # the plugin named by the environment
    assert rc == 0, log[-3000:]
    # the log's first line reruns the job without the environment: the plugin is written as --plugin
    assert log.splitlines()[0] == "# command: " + shlex.join(["ru", "--plugin", TOY_METHOD, *args])
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "toy_ascent" and run["status"] == "ok" and run["steps"] == 2
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert rows[0]["ce_forget"] == pytest.approx(-expected / scale, rel=1e-5)
    assert rows[1]["loss"] < rows[0]["loss"]            # gradient ascent: the forget CE went up
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # a setting the method does not have is refused by name (the Config dataclass is the whole validation)
    bad = [a if a != json.dumps({"lr": 1e-2, "scale": scale}) else '{"lr": 0.01, "scael": 2}' for a in args]
    rc, log = _ru(["--plugin", TOY_METHOD, *bad[:-6], "--out", str(tmp_path / "bad"), "--checkpoint-dir",
                   str(tmp_path / "ck_bad"), "--threads", "1"], tmp_path / "bad.log")
    assert rc == 1 and "scael" in log.strip().splitlines()[-1], log[-2000:]


@pytest.mark.slow
def test_a_toy_attack_from_one_file_runs_through_ru(world, base, tmp_path):
    attacked = tmp_path / "attack" / "toy_scale" / "factor~0.5" / "models~base"
    rc, log = _ru(["--plugin", TOY_ATTACK, "attack", "--attack", "toy_scale", "--settings", '{"factor": 0.5}',
                   "--data", str(world / "data"), "--model-dir", str(base), "--out", str(attacked), "--threads", "1"],
                  tmp_path / "attack.log")
    assert rc == 0, log[-3000:]
    before, after = load_file(str(base / "model.safetensors")), load_file(str(attacked / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(after[k], before[k] * 0.5), k
    assert json.loads((attacked / "attack.json").read_text())["status"] == "ok"

    # the evaluation of the attacked model, as the evaluate rule runs it for a model attack
    out = tmp_path / "eval"
    rc, log = _ru(["--plugin", TOY_ATTACK, "evaluate", "--benchmark-name", "synthetic",
                   "--evaluation", '{"metrics": ["mcq_cloze:forget"], "max_items": 4}', "--data", str(world / "data"),
                   "--model-id", "models/base", "--model-dir", str(attacked / "model"), "--attack", "toy_scale",
                   "--attack-params", "factor~0.5", "--artefact-dir", str(attacked), "--out", str(out),
                   "--threads", "1"], tmp_path / "eval.log")
    assert rc == 0, log[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "ok" and record["attack"] == "toy_scale"
    assert 0.0 <= record["metrics"]["forget_mcq_acc"] <= 1.0 and record["n_items"]
    # the library's per-metric timing reaches the job log (logging configured by ru)
    assert re.search(r"INFO robust_unlearning\.metrics\.evaluate: metric mcq_cloze:forget: 4 items in [\d.]+s", log), log


def test_plugin_names_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RU_PLUGINS", "b, a.py,,b")
    assert plugin_names(["a.py", "c"]) == ["a.py", "c", "b"]
    monkeypatch.delenv("RU_PLUGINS")
    with pytest.raises(PluginError, match=r"plugin 'nowhere\.py'.*file not found"):
        load_plugins(["nowhere.py"])
    with pytest.raises(PluginError, match="no module named 'no_such_pkg'"):
        load_plugins(["no_such_pkg.methods"])
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):   # the plugin's own error, unchanged
        load_plugins([str(broken)])
