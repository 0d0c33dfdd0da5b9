"""Resource estimates derived from the model (src/robust_unlearning/resources.py; docs/cluster.md, "Resources follow
the model"): parameter counts against published numbers and against transformers' own modules, the memory
arithmetic against hand-computed values, where the config.json is looked up (never the network), and that the
embedded tiny default keeps asking for little."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from robust_unlearning import resources as R
from robust_unlearning.config import validate_config
from robust_unlearning.config.grid import attack_settings, unlearn_runs

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "model_configs"

# Llama-2-7B: 32000·4096 embeddings + the same untied LM head + 32 layers of (4·4096² attention + 3·4096·11008
# MLP + 2·4096 norms) + the final 4096 norm = 6,738,415,616, the count Meta publishes for Llama-2-7b-hf
LLAMA2_7B = 6_738_415_616
# Ministral-8B-Instruct-2410's model card gives 8,019,808,256 parameters
MINISTRAL_8B = 8_019_808_256


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def arch_of(name: str) -> R.Architecture:
    return R.Architecture.from_config(fixture(name), origin=name)


def preset(name: str) -> dict:
    return validate_config(yaml.safe_load((ROOT / "workflow" / "presets" / f"{name}.yaml").read_text()))


# ------------------------------------------------------------------------------------------- parameter count
@pytest.mark.parametrize("name, expected", [("llama-2-7b", LLAMA2_7B), ("iclm-7b", LLAMA2_7B),
                                            ("ministral-8b-instruct-2410", MINISTRAL_8B)])
def test_the_published_parameter_counts(name, expected):
    assert R.parameter_count(fixture(name)) == expected


SMALL = dict(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=128)


@pytest.mark.parametrize("config", [
    fixture("llama-2-7b"), fixture("ministral-8b-instruct-2410"),
    dict(model_type="llama", **SMALL, num_key_value_heads=2, tie_word_embeddings=True),    # GQA, tied head
    dict(model_type="llama", **SMALL, attention_bias=True, mlp_bias=True),
    dict(model_type="qwen2", **SMALL, num_key_value_heads=2),                                # q/k/v biases
    dict(model_type="mistral", **SMALL, num_key_value_heads=1, head_dim=32),                 # head_dim ≠ d/heads
    dict(model_type="gpt2", vocab_size=1000, n_embd=64, n_layer=3, n_head=4, n_positions=128),  # learned positions
], ids=["llama-2-7b", "ministral-8b", "llama-gqa-tied", "llama-biases", "qwen2", "mistral-head-dim", "gpt2"])
def test_the_count_equals_transformers_own_modules(config):
    """The formula against the real model class, built on the meta device (no memory, no weights)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    real = sum(p.numel() for p in model.parameters())
    # the full dict, as a config.json written by transformers has it (every key the class would otherwise default)
    assert R.Architecture.from_config(hf.to_dict()).n_params == real


def test_a_llama_config_without_the_tie_key_counts_the_head():
    """A missing key never undercounts: an untied head is assumed for Llama-like models."""
    cfg = dict(model_type="llama", **SMALL)
    assert R.parameter_count(cfg) == R.parameter_count({**cfg, "tie_word_embeddings": True}) + 1000 * 64


def test_a_config_without_the_sizes_names_the_file_and_key():
    with pytest.raises(R.ResourceConfigError, match=r"models/x/config.json: no 'vocab_size'"):
        R.Architecture.from_config({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1},
                                   origin="models/x/config.json")


def test_the_tiny_presets_are_the_models_presets(tiny_tokenizer):
    from robust_unlearning.models.architectures import PRESETS, build_llama

    assert R.TINY_PRESETS == PRESETS
    arch = R.find_architecture({"source": "train_tiny", "preset": "micro-llama", "vocab_size": len(tiny_tokenizer)})
    real = sum(p.numel() for p in build_llama(tiny_tokenizer, preset="micro-llama").parameters())
    # the estimate counts the tokenizer's special tokens generously: at least the real count, at most 64 rows more
    assert real <= arch.n_params <= real + R.TINY_SPECIAL_TOKENS * 32


# -------------------------------------------------------------------------------------------- memory by hand
def test_npo_on_llama2_7b_by_hand():
    """NPO+GDR at the MUSE settings (bf16, micro-batch 1 × 2048 tokens, gradient checkpointing), by hand."""
    cfg = preset("muse_news")
    est = R.estimate_job("unlearn", cfg, arch_of("llama-2-7b"), method="npo",
                         method_settings={"lr": 1e-5, "beta": 0.1, "retain_loss": "gdr", "lambda_r": 1.0})
    P, e = LLAMA2_7B, 2
    weights = P * e                                     # 13,476,831,232
    state = weights + P * e * (1 + 2 + 1)               # + gradients, AdamW's two moments, the spare buffer
    assert state == 67_384_156_160
    # activations: 32 layer inputs of 2048 × 4096 bf16, one layer recomputed with its backward
    # (2 × 2048 tokens × 2 B × (8·4096 + 2·4096 + 4·11008)), one layer of 32 × 2048² scores, and the logits
    # 2048 × 32000 × (2·2 + 12) B
    acts = 32 * 2048 * 4096 * 2 + 2 * 2048 * 2 * (8 * 4096 + 2 * 4096 + 4 * 11008) + 2 * 32 * 2048 ** 2 \
        + 2048 * 32000 * 16
    assert acts == 2_550_136_832
    gpu = (state + acts + R.CUDA_CONTEXT_BYTES) * 1.2   # 86,321,151,590 B → 87,000 MB
    assert est.gpu_mem_mb == 87_000 and est.gpu_mem_mb * 1e6 >= gpu
    # host: base process + the fp16 weights read from disk + the checkpoint read back at resume (weights and
    # the two AdamW moments): (3e9 + 13.48e9 + 13.48e9 + 26.95e9) × 1.2 = 68.3e9 → 69,000 MB
    assert est.mem_mb == 69_000
    assert est.mem_mb * 1e6 >= (R.HOST_BASE_BYTES + 2 * weights + 2 * P * e) * 1.2


def test_ga_holds_no_spare_buffer_and_klr_a_frozen_copy():
    cfg, arch = preset("muse_news"), arch_of("llama-2-7b")
    npo = R.estimate_job("unlearn", cfg, arch, method="npo", method_settings={"retain_loss": "gdr"})
    ga = R.estimate_job("unlearn", cfg, arch, method="ga", method_settings={})
    klr = R.estimate_job("unlearn", cfg, arch, method="npo", method_settings={"retain_loss": "klr"})
    weights_mb = LLAMA2_7B * 2 / 1e6
    assert npo.gpu_mem_mb - ga.gpu_mem_mb >= weights_mb       # the spare buffer (× the 1.2 margin, minus rounding)
    assert klr.gpu_mem_mb - npo.gpu_mem_mb >= weights_mb      # θ₀ beside the model
    assert klr.runtime > npo.runtime > ga.runtime             # reference forwards; two passes against one


@pytest.mark.parametrize("method, settings, copy", [
    ("npo", {}, False), ("npo", {"retain_loss": "klr"}, True), ("npo", {"npo_form": "logit"}, True),
    ("npo", {"ref_logprobs": "per_step"}, True), ("sam_npo", {}, False), ("prism", {}, False),
    ("prism", {"prism_compat": "released"}, True), ("graddiff", {"retain_loss": "klr"}, True), ("ga", {}, False),
    ("rmu", {}, True), ("rmu", {"alpha": 0}, False), ("task_vector", {}, True), ("a_plugin_method", {}, True),
])
def test_which_methods_keep_a_frozen_copy(method, settings, copy):
    assert R.needs_frozen_copy(method, settings) is copy


def test_lora_counts_by_hand_and_shrinks_the_request():
    arch = arch_of("llama-2-7b")
    # r 8 on q, k, v, o (8·(4096+4096) each), gate and up (8·(4096+11008)), down (8·(11008+4096)), 32 layers
    per_layer = 4 * 8 * 8192 + 3 * 8 * 15104
    assert R.lora_parameters(arch, {"r": 8}) == 32 * per_layer == 19_988_480
    cfg = preset("muse_news")
    full = R.estimate_job("unlearn", cfg, arch, method="prism", method_settings={})
    cfg["unlearning"]["train"]["lora"] = {"r": 8}
    lora = R.estimate_job("unlearn", cfg, arch, method="prism", method_settings={})
    # the frozen bf16 weights stay; gradients, moments and the buffer shrink to the adapters'
    assert lora.gpu_mem_mb * 1e6 >= LLAMA2_7B * 2
    assert full.gpu_mem_mb - lora.gpu_mem_mb >= 0.9 * 4 * LLAMA2_7B * 2 * 1.2 / 1e6


def test_fp32_doubles_what_the_weights_need():
    cfg, arch = preset("wmdp_bio"), arch_of("ministral-8b-instruct-2410")
    bf16 = R.estimate_job("evaluate", cfg, arch)
    cfg["evaluation"]["dtype"] = "float32"
    fp32 = R.estimate_job("evaluate", cfg, arch)
    assert bf16.gpu_mem_mb * 1e6 >= MINISTRAL_8B * 2 and fp32.gpu_mem_mb * 1e6 >= MINISTRAL_8B * 4
    assert fp32.gpu_mem_mb - bf16.gpu_mem_mb >= MINISTRAL_8B * 2 / 1e6


def test_runtime_scales_with_parameters_times_tokens():
    cfg = preset("muse_news")
    small = R.Architecture.from_config({**fixture("llama-2-7b"), "num_hidden_layers": 16})
    big, half = (R.estimate_job("unlearn", cfg, a, method="prism", method_settings={})
                 for a in (arch_of("llama-2-7b"), small))
    cfg["unlearning"]["train"]["epochs"] = 20
    longer = R.estimate_job("unlearn", cfg, arch_of("llama-2-7b"), method="prism", method_settings={})
    assert big.detail["flops"] == pytest.approx(2 * half.detail["flops"], rel=0.05)
    assert longer.detail["flops"] == pytest.approx(2 * big.detail["flops"], rel=0.05)
    assert longer.runtime > big.runtime > half.runtime >= R.RUNTIME_FLOOR_MIN


# ------------------------------------------------------------------------------------ where config.json is found
def _hub_cache(root: Path, repo: str, config: dict, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A model in the hub cache's own layout: models--org--name/refs/main → snapshots/<commit>/config.json."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))
    return snap / "config.json"


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("resources tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_base_model_wins_then_the_hub_cache(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = _hub_cache(tmp_path / "hub", "muse-bench/MUSE-News_target", fixture("llama-2-7b"))
    model = {"source": "hub", "name_or_path": "muse-bench/MUSE-News_target", "revision": None}
    arch = R.find_architecture(model, tmp_path / "bench")
    assert arch.origin == str(cached) and arch.n_params == LLAMA2_7B
    base = tmp_path / "bench" / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(fixture("ministral-8b-instruct-2410")))
    arch = R.find_architecture(model, tmp_path / "bench")
    assert arch.origin == str(base / "config.json") and arch.n_params == MINISTRAL_8B


def test_a_local_model_folder_is_read(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(fixture("llama-2-7b")))
    assert R.find_architecture({"source": "local", "name_or_path": str(tmp_path / "m")}).n_params == LLAMA2_7B


def test_an_uncached_model_falls_back_with_a_warning_and_no_download(tmp_path, monkeypatch, capsys, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(R, "_WARNED", set())
    arch = R.find_architecture({"source": "hub", "name_or_path": "org/not-cached-anywhere"}, tmp_path / "bench")
    assert arch.origin == "fallback" and arch.n_params == MINISTRAL_8B
    assert "'org/not-cached-anywhere'" in capsys.readouterr().err


def test_an_unreadable_config_is_sized_as_the_fallback_and_named(tmp_path, monkeypatch, capsys):
    """A base model whose config.json lacks the sizes never stops the plan: one warning names file and key."""
    monkeypatch.setattr(R, "_WARNED", set())
    base = tmp_path / "bench" / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    arch = R.find_architecture({"source": "gguf", "name_or_path": "x.gguf"}, tmp_path / "bench")
    assert arch.origin == "fallback"
    err = capsys.readouterr().err
    assert str(base / "config.json") in err and "'num_attention_heads'" in err and err.count("\n") == 1


def test_forget_examples_are_counted_from_the_prepared_data(tmp_path):
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "dialogue").mkdir()
    (data / "raw" / "forget.txt").write_text("x" * 9000)
    (data / "raw" / "forget.json").write_text(json.dumps([f"doc {i}" for i in range(5)]))
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (data / "dialogue" / "forget.jsonl").write_text("".join(json.dumps(row) + "\n" for _ in range(7)))
    assert R.forget_examples(data, "chunks", 1000) == 3        # 9000 bytes / 3 bytes per token / 1000 tokens
    assert R.forget_examples(data, "raw", 1000) == 5
    assert R.forget_examples(data, "dialogue", 1000) == 7
    assert R.forget_examples(tmp_path / "absent", "raw", 1000) == R.DEFAULT_FORGET_EXAMPLES


# ----------------------------------------------------------------------------------------- the tiny default
def test_the_embedded_default_asks_for_little():
    """The tiny model of config.yaml: every job's memory stays within the 8 GB the rules used to ask for."""
    cfg = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    arch = R.find_architecture(cfg["model"])
    assert arch.n_params < 2_000_000
    jobs = [("unlearn", dict(method=r.method, method_settings=r.settings)) for r in unlearn_runs(cfg)]
    for a in attack_settings(cfg):
        rule = ("attack_model" if a.attack in {"relearn", "quantize", "weight_noise"} else
                "attack_prompt_model" if a.attack in {"gcg", "jailbreak_templates"} else "attack_shared")
        jobs += [(rule, dict(attack=a.attack, attack_settings=a.settings)),
                 ("evaluate", dict(attack=a.attack, attack_settings=a.settings))]
    jobs += [(rule, {}) for rule in ("cache_base_model", "train_retrain_oracle", "train_probe", "evaluate",
                                     "loss_landscape")]
    for rule, job in jobs:
        est = R.estimate_job(rule, cfg, arch, **job)
        assert est.mem_mb <= 8000 and est.gpu_mem_mb <= 8000, (rule, job, est)
        assert est.runtime >= R.RUNTIME_FLOOR_MIN
