"""Training examples as the released WMDP runs built them (docs/benchmarks.md, "Training examples"):
`prompt_format: plain` (the "{system}\\n{user}\\n{assistant}" text without a chat template, defect D12) and
`mask_pad_labels: false` (every example padded to max_len, the pad id kept as label, defect D4); both validated
as keys of the benchmark section, both seen by the probe and the unlearning run alike."""
from __future__ import annotations

import pytest
import torch

from robust_unlearning.config import validate_config
from robust_unlearning.data.collate import (IGNORE_INDEX, PLAIN_SYSTEM_PROMPTS, encode_plain_dialogue, pad_batch,
                                            pad_to_length)
from robust_unlearning.data.formats import Benchmark
from robust_unlearning.data.synthetic import generate_world
from robust_unlearning.data.unlearning_sets import ExampleFormat, build_examples, build_run_examples
from robust_unlearning.methods import ConfigError
from robust_unlearning.methods import losses as L
from robust_unlearning.methods.batching import examples_sha256, make_microbatch


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Benchmark:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate_world(out, seed=0, size="tiny")
    return Benchmark(out)


def test_plain_format_is_the_released_text_with_the_prompt_masked(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = encode_plain_dialogue(tok, "  What hosts Veltrax? ", " The glass heron. ", "SYS", 64)
    want = tok("SYS\nWhat hosts Veltrax?\nThe glass heron.", add_special_tokens=True)["input_ids"]
    n_prompt = len(tok("SYS\nWhat hosts Veltrax?", add_special_tokens=True)["input_ids"])
    assert ex["input_ids"] == want
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == want[n_prompt:] and n_prompt < len(want)
    assert tok.eos_token_id not in ex["input_ids"]            # the released code adds no EOS
    # truncated like the reference (tokeniser truncation at max_len)
    assert encode_plain_dialogue(tok, "What hosts Veltrax?", "The glass heron.", "SYS", 5)["input_ids"] == want[:5]


def test_plain_dialogues_use_the_released_system_prompt_of_their_split(synth, tiny_tokenizer):
    forget = build_examples(synth, tiny_tokenizer, "forget", "dialogue", 128, prompt_format="plain")
    retain = build_examples(synth, tiny_tokenizer, "retain", "dialogue", 128, prompt_format="plain")
    msgs = synth.dialogue("forget")[0]["messages"]
    user = next(m["content"] for m in msgs if m["role"] == "user")
    answer = next(m["content"] for m in msgs if m["role"] == "assistant")
    assert forget[0] == encode_plain_dialogue(tiny_tokenizer, user, answer, PLAIN_SYSTEM_PROMPTS["forget"], 128)
    assert tiny_tokenizer.decode(retain[0]["input_ids"], skip_special_tokens=True).startswith(
        PLAIN_SYSTEM_PROMPTS["retain"])
    chat = build_examples(synth, tiny_tokenizer, "forget", "dialogue", 128)
    assert chat[0]["input_ids"] != forget[0]["input_ids"]      # the default stays the chat template


def test_pad_labels_kept_as_the_reference_does(tiny_tokenizer):
    ex = {"input_ids": [1, 5, 6], "labels": [IGNORE_INDEX, 5, 6]}
    padded = pad_to_length(ex, 6, 0)
    assert padded["input_ids"] == [1, 5, 6, 0, 0, 0]
    assert padded["labels"] == [IGNORE_INDEX, 5, 6, 0, 0, 0]       # pads ARE targets (D4)
    assert padded["attention_mask"] == [1, 1, 1, 0, 0, 0]
    b = pad_batch([padded, {"input_ids": [1, 7], "labels": [1, 7]}], pad_id=2)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert b["labels"][1].tolist() == [1, 7] + [IGNORE_INDEX] * 4     # collation padding: never a target
    mb = make_microbatch([padded, {"input_ids": [1, 7], "labels": [1, 7]}], [0, 1], 2, "cpu", ("forget", 0))
    assert mb.n_tokens == 5 + 1 and mb.n_positions == 5 and mb.n_owned == 6 + 2
    # CE over the padded example counts the pad targets: 5 targets after the shift, 3 of them pads
    logits = torch.zeros(1, 6, 8)
    logits[0, :, 0] = 2.0                                            # the pad id is the likely next token
    ce = L.token_ce(logits, torch.tensor([padded["labels"]])).item()
    lp_pad = torch.log_softmax(logits[0, 0], -1)[0].item()
    lp_other = torch.log_softmax(logits[0, 0], -1)[5].item()
    assert ce == pytest.approx(-(3 * lp_pad + 2 * lp_other) / 5, abs=1e-6)
    # the padding is part of the example's identity
    assert examples_sha256([padded]) != examples_sha256([{k: v for k, v in padded.items() if k != "attention_mask"}])


def test_mask_pad_labels_false_pads_every_example_to_max_len(synth, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    out = build_examples(synth, tiny_tokenizer, "forget", "dialogue", 96, mask_pad_labels=False)
    assert all(len(e["input_ids"]) == 96 == len(e["labels"]) == len(e["attention_mask"]) for e in out)
    e = out[0]
    n = sum(e["attention_mask"])
    assert n < 96 and e["input_ids"][n:] == [pad] * (96 - n) and e["labels"][n:] == [pad] * (96 - n)
    zero = build_examples(synth, tiny_tokenizer, "forget", "dialogue", 96, mask_pad_labels=False, static_pad_id=0)
    assert zero[0]["labels"][n:] == [0] * (96 - n)                   # the released code writes id 0
    default = build_examples(synth, tiny_tokenizer, "forget", "dialogue", 96)
    assert "attention_mask" not in default[0] and len(default[0]["input_ids"]) == n


def test_run_examples_follow_the_benchmark_section(synth, tiny_tokenizer):
    cfg = {"name": "synthetic", "forget_source": "dialogue", "retain_source": "dialogue", "prompt_format": "plain",
           "mask_pad_labels": False, "static_pad_id": 0}
    forget, retain = build_run_examples(synth, tiny_tokenizer, cfg, 96)
    assert forget[0]["input_ids"][:len(forget[0]["input_ids"]) - forget[0]["attention_mask"].count(0)] == \
        encode_plain_dialogue(tiny_tokenizer, *_pair(synth, "forget"), PLAIN_SYSTEM_PROMPTS["forget"], 96)["input_ids"]
    assert all(len(e["input_ids"]) == 96 for e in forget + retain)
    plain = build_run_examples(synth, tiny_tokenizer, {"name": "synthetic"}, 96)
    assert plain[0] == build_examples(synth, tiny_tokenizer, "forget", "raw", 96)


def _pair(bench, split):
    msgs = bench.dialogue(split)[0]["messages"]
    return (next(m["content"] for m in msgs if m["role"] == "user"),
            next(m["content"] for m in msgs if m["role"] == "assistant"))


@pytest.mark.parametrize("section,key", [
    ({"prompt_format": "plain"}, "prompt_format"),                    # no dialogue source to format
    ({"forget_source": "dialogue", "static_pad_id": 0}, "static_pad_id"),   # pads are not labelled
    ({"forget_source": "dialogue", "prompt_format": "jinja"}, "prompt_format"),
    ({"mask_pad_labels": False, "static_pad_id": -1}, "static_pad_id"),
])
def test_example_format_errors_name_the_key(section, key):
    with pytest.raises(ConfigError) as info:
        ExampleFormat.from_benchmark({"name": "synthetic", **section})
    assert info.value.key == key


def test_config_validation_names_the_benchmark_key():
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    raw["benchmark"] = {**raw["benchmark"], "prompt_format": "plain"}
    with pytest.raises(ValueError, match="benchmark.prompt_format"):
        validate_config(raw)
    raw["benchmark"] = {**raw["benchmark"], "forget_source": "dialogue", "mask_pad_labels": False,
                        "static_pad_id": 0}
    cfg = validate_config(raw)
    assert "static_pad_id" in cfg["benchmark"]
