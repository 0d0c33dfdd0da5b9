"""The prepared GPU check (workflow/scripts/gpu_check.py) runs its own code path on CPU with a tiny shape.

It must run where only PyTorch, transformers, accelerate and peft are installed (the GPU machine has no snakemake,
jsonschema, lm-eval, rouge-score, gguf or matplotlib), so the test blocks those imports while it runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "workflow" / "scripts" / "gpu_check.py"
ABSENT_ON_GPU_MACHINE = ["snakemake", "jsonschema", "lm_eval", "rouge_score", "gguf", "matplotlib"]

RUNNER = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked for the test: {name}", name=name)
        return None
sys.meta_path.insert(0, Block())
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_check_smoke_runs_without_cluster_only_packages(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", RUNNER, ",".join(ABSENT_ON_GPU_MACHINE), str(SCRIPT), "--smoke",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["shape"] == "smoke" and summary["device"] == "cpu" and summary["gradient_checkpointing"]
    methods = [r["method"] for r in summary["train"]]
    assert methods == ["NPO+GDR", "SAM+NPO", "PRISM", "PRISM + LoRA"]
    for r in summary["train"]:
        assert r["s_per_step"] > 0 and r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0
        # policy passes, plus the logit form's reference forward (1/3 of a pass): the presets' NPO form
        assert 0 < r["mfu"] < 1 and r["passes"] == pytest.approx((2 if r["method"] == "NPO+GDR" else 3) + 1 / 3)
    e = summary["eval"]
    assert e["score_tokens_per_s"] > 0 and e["generate_new_tokens_per_s"] > 0
    assert summary["params_changed"] is True      # the timed steps really trained the model
    assert "| PRISM + LoRA |" in proc.stdout


def test_gpu_check_flops_accounting():
    """6·N (non-embedding) + 12·L·d·T per token, the PaLM accounting the docstring promises."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    model = mod.build_model("smoke", torch.float32, torch.device("cpu"), 64)
    c = model.config
    d, L, f, V = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    per_layer = 4 * d * d + 3 * d * f + 2 * d          # q,k,v,o + gate,up,down + two RMSNorm weights
    n = L * per_layer + d                              # + final norm
    assert mod.n_nonembedding(model) == n
    assert mod.flops_per_token(model, 64) == 6 * n + 12 * L * d * 64
    assert sum(p.numel() for p in model.parameters()) == n + 2 * V * d


def test_gpu_check_methods_are_the_muse_news_preset_settings():
    """gpu_check.py keeps its own copy of the preset's method settings (it runs without Snakemake): the copy must
    say what workflow/presets/muse_news.yaml says, so that a change of the preset shows here."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    preset = yaml.safe_load((ROOT / "workflow" / "presets" / "muse_news.yaml").read_text())["unlearning"]["methods"]
    for label, (name, params) in mod.METHODS.items():
        grid = preset[name]
        assert not isinstance(grid, list), f"{name}: the check assumes one grid per method"
        flat = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in grid.items()}
        assert params == flat, f"{label}: gpu_check.METHODS {params} != muse_news.yaml {flat}"
