"""Benchmark loader validation (clear errors naming file and line/field) and unlearning-set construction."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from robust_unlearning.data.collate import IGNORE_INDEX
from robust_unlearning.data.formats import Benchmark, BenchmarkError
from robust_unlearning.data.synthetic import generate_world
from robust_unlearning.data.unlearning_sets import (build_examples, build_mixture_examples, forget_fingerprint,
                                                    relearn_subset, split_texts)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ helpers
def _write(root: Path, rel: str, obj) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    elif isinstance(obj, str):
        path.write_text(obj, encoding="utf-8")
    elif rel.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj), encoding="utf-8")
    else:
        path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _minimal(root: Path) -> Path:
    """A small valid benchmark in the MUSE + MCQ + dialogue layout (replacing whatever ``root`` held)."""
    shutil.rmtree(root, ignore_errors=True)
    _write(root, "raw/forget.json", ["The fox ate a plum.", "Veltrax spreads through marsh mist."])
    _write(root, "raw/retain1.json", ["Orlinde lies on a river."])
    _write(root, "verbmem/forget.json", [{"prompt": "The fox", "gt": "ate a plum."}])
    _write(root, "knowmem/forget_qa.json", [{"question": "What did the fox eat?", "answer": "a plum"}])
    _write(root, "knowmem/retain_qa.json", [{"question": "Where is Orlinde?", "answer": "on a river"}])
    _write(root, "privleak/forget.json", ["The fox ate a plum."])
    _write(root, "privleak/holdout.json", ["A cat slept."])
    _write(root, "mcq/forget.jsonl", [{"question": "Host?", "choices": ["a", "b", "c", "d"], "answer": 1}])
    _write(root, "mcq/retain.jsonl", [{"question": "River?", "choices": ["a", "b", "c", "d"], "answer": 0,
                                       "subject": "fictional_towns"}])
    _write(root, "dialogue/forget.jsonl", [{"messages": [{"role": "user", "content": "Host of Veltrax?"},
                                                         {"role": "assistant", "content": "glass heron"}]}])
    _write(root, "dialogue/retain.jsonl", [{"messages": [{"role": "user", "content": "River of Orlinde?"},
                                                         {"role": "assistant", "content": "Sable"}]}])
    return root


@pytest.fixture()
def good(tmp_path) -> Path:
    return _minimal(tmp_path / "bench")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Benchmark:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate_world(out, seed=0, size="tiny")
    return Benchmark(out)


def _error(root: Path, call=lambda b: b.validate()) -> str:
    with pytest.raises(BenchmarkError) as info:
        call(Benchmark(root))
    return str(info.value)


# ------------------------------------------------------------------------------------------ valid data
def test_minimal_benchmark_validates(good):
    counts = Benchmark(good).validate()
    assert counts["raw/forget.json"] == 2 and counts["mcq/forget.jsonl"] == 1
    assert counts["dialogue/retain.jsonl"] == 1


def test_split_name_variants_are_accepted(good):
    (good / "knowmem/retain_qa.json").rename(good / "knowmem/retain2_qa.json")
    _write(good, "privleak/retain2.json", ["Orlinde lies on a river."])
    b = Benchmark(good)
    assert b.knowmem("retain_qa")[0]["answer"] == "on a river"
    assert b.knowmem("retain2_qa") == b.knowmem("retain_qa")
    assert b.privleak("retain") == ["Orlinde lies on a river."]
    assert "knowmem/retain2_qa.json" in b.validate()


def test_real_wmdp_layout(tmp_path):
    root = tmp_path / "wmdp"
    _write(root, "dialogue/forget.jsonl", [{"messages": [{"role": "user", "content": "q1"},
                                                         {"role": "assistant", "content": "a1"}]}])
    _write(root, "mcq/wmdp-bio.jsonl", [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 3}])
    _write(root, "mmlu/test.jsonl", [{"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"],
                                      "answer": 2}])
    b = Benchmark(root)
    counts = b.validate()
    assert counts == {"mcq/wmdp-bio.jsonl": 1, "mmlu/test.jsonl": 1, "dialogue/forget.jsonl": 1}
    assert b.mcq("mmlu/test")[0]["subject"] == "anatomy"


def test_missing_file_and_missing_dir(tmp_path, good):
    assert "file not found" in _error(good, lambda b: b.verbmem() and b.prefill())
    with pytest.raises(BenchmarkError, match="not found"):
        Benchmark(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no forget set" in _error(empty)


def test_synthetic_meta_and_aliases(synth):
    row = synth.mcq("forget")[0]
    aliases = Benchmark.aliases(row)
    assert aliases[0] == row["choices"][row["answer"]] and len(aliases) >= 1
    inc = next(r for r in synth.mcq("forget") if r["meta"]["attribute"] == "incubation")
    n = inc["choices"][inc["answer"]].split()[0]
    assert f"{n}-day" in Benchmark.aliases(inc)
    assert synth.meta("mcq/forget.jsonl")[0] == row["meta"]
    assert synth.meta("raw/forget.json")[0]["variant"] == 0
    assert synth.meta("jailbreak/autodan.json") == synth.autodan_meta()
    assert synth.meta("jailbreak/xstest.csv")[0]["aliases"]
    assert synth.has("world.json") and synth.path("world.json").is_file()


def test_aliases_fallbacks():
    assert Benchmark.aliases({"question": "q", "answer": "a plum"}) == ["a plum"]
    assert Benchmark.aliases({"question": "q", "choices": ["w", "x", "y", "z"], "answer": 2}) == ["y"]
    assert Benchmark.aliases({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "ans"}]}) == ["ans"]
    assert Benchmark.aliases({"answer": "12 days", "meta": {"answer": "12 days",
                                                            "aliases": ["12 days", "twelve days"]}}) == \
        ["12 days", "twelve days"]


# ------------------------------------------------------------------------------------------ bad data
def test_malformed_json_names_file(good):
    _write(good, "raw/forget.json", '["a", "b",')
    msg = _error(good)
    assert "raw/forget.json" in msg and "malformed JSON" in msg


def test_malformed_jsonl_names_file_and_line(good):
    _write(good, "mcq/forget.jsonl", json.dumps({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 0})
           + "\n{not json}\n")
    msg = _error(good)
    assert "mcq/forget.jsonl" in msg and "line 2" in msg


def test_missing_field_names_file_item_and_field(good):
    _write(good, "knowmem/forget_qa.json", [{"question": "q", "answer": "a"}, {"answer": "b"}])
    msg = _error(good)
    assert "knowmem/forget_qa.json" in msg and "item 1" in msg and "'question'" in msg


def test_wrong_type_names_field(good):
    _write(good, "verbmem/forget.json", [{"prompt": "p", "gt": 7}])
    msg = _error(good)
    assert "verbmem/forget.json" in msg and "'gt'" in msg and "str" in msg
    _minimal(good)
    _write(good, "raw/retain1.json", ["ok", 3])
    msg = _error(good)
    assert "raw/retain1.json" in msg and "item 1" in msg


def test_empty_forget_set(good):
    _write(good, "raw/forget.json", [])
    msg = _error(good)
    assert "raw/forget.json" in msg and "forget set is empty" in msg
    _minimal(good)
    _write(good, "dialogue/forget.jsonl", "")
    msg = _error(good)
    assert "dialogue/forget.jsonl" in msg and "empty" in msg


def test_mcq_answer_out_of_range(good):
    rows = [{"question": "q1", "choices": ["a", "b", "c", "d"], "answer": 0},
            {"question": "q2", "choices": ["a", "b", "c", "d"], "answer": 4}]
    _write(good, "mcq/forget.jsonl", rows)
    msg = _error(good)
    assert "mcq/forget.jsonl" in msg and "line 2" in msg and "'answer'" in msg and "out of range" in msg


def test_mcq_answer_must_be_int(good):
    _write(good, "mcq/forget.jsonl", [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "1"}])
    msg = _error(good)
    assert "line 1" in msg and "'answer'" in msg and "int" in msg


def test_mcq_needs_four_choices(good):
    _write(good, "mcq/retain.jsonl", [{"question": "q", "choices": ["a", "b", "c"], "answer": 0}])
    msg = _error(good)
    assert "mcq/retain.jsonl" in msg and "line 1" in msg and "'choices'" in msg and "4" in msg


def test_non_utf8_text(good):
    _write(good, "raw/forget.json", b'["caf\xe9 \xff"]')
    msg = _error(good)
    assert "raw/forget.json" in msg and "UTF-8" in msg
    _minimal(good)
    _write(good, "dialogue/retain.jsonl", b'{"messages": []}\n\xff\xfe\n')
    msg = _error(good)
    assert "dialogue/retain.jsonl" in msg and "UTF-8" in msg
    _minimal(good)
    _write(good, "jailbreak/xstest.csv", b"id,prompt,type,label,focus,note\n1,\xff,t,safe,f,n\n")
    msg = _error(good)
    assert "xstest.csv" in msg and "UTF-8" in msg


def test_forget_retain_overlap_raw(good):
    _write(good, "raw/retain1.json", ["Orlinde lies on a river.", "The fox ate a plum."])
    msg = _error(good)
    assert "raw/forget.json" in msg and "raw/retain1.json" in msg and "overlap" in msg


def test_forget_retain_overlap_questions(good):
    _write(good, "knowmem/retain_qa.json", [{"question": "What did the fox eat?", "answer": "a plum"}])
    assert "overlap" in _error(good)
    _minimal(good)
    _write(good, "mcq/retain.jsonl", [{"question": "Host?", "choices": ["a", "b", "c", "d"], "answer": 2}])
    msg = _error(good)
    assert "mcq/retain.jsonl" in msg and "overlap" in msg
    _minimal(good)
    _write(good, "dialogue/retain.jsonl", [{"messages": [{"role": "user", "content": "Host of Veltrax?"},
                                                         {"role": "assistant", "content": "a moth"}]}])
    msg = _error(good)
    assert "dialogue/retain.jsonl" in msg and "overlap" in msg


def test_dialogue_message_errors(good):
    _write(good, "dialogue/retain.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                         {"role": "assistant", "content": "a"}]},
                                           {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}])
    msg = _error(good)
    assert "dialogue/retain.jsonl" in msg and "line 2" in msg and "'role'" in msg
    _minimal(good)
    _write(good, "dialogue/forget.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    msg = _error(good)
    assert "line 1" in msg and "assistant" in msg
    _minimal(good)
    _write(good, "dialogue/forget.jsonl", [{"text": "no messages"}])
    msg = _error(good)
    assert "line 1" in msg and "'messages'" in msg


def test_jailbreak_file_errors(good):
    _write(good, "jailbreak/xstest.csv", "id,prompt,type,label,focus,note\n1,hi,t,safe,f,n\n2,yo,t,maybe,f,n\n")
    msg = _error(good)
    assert "xstest.csv" in msg and "line 3" in msg and "'label'" in msg
    _minimal(good)
    _write(good, "jailbreak/xstest.csv", "id,prompt,type,focus,note\n1,hi,t,f,n\n")
    assert "missing column" in _error(good)
    _minimal(good)
    _write(good, "jailbreak/autodan.json", {"behaviour_a": ["p"], "behaviour_b": []})
    msg = _error(good)
    assert "autodan.json" in msg and "behaviour_b" in msg
    _minimal(good)
    _write(good, "jailbreak/multi_turn.json", [{"objective": "x", "conversation": [{"role": "bot", "content": "c"}]}])
    msg = _error(good)
    assert "multi_turn.json" in msg and "item 0" in msg and "role" in msg


def test_misaligned_sidecar(good):
    _write(good, "raw/forget.json.meta.json", [{"entity": "a"}])
    msg = _error(good)
    assert "raw/forget.json.meta.json" in msg and "1 entries" in msg


# ------------------------------------------------------------------------------------------ unlearning sets
def test_build_examples_all_sources(synth, tiny_tokenizer):
    tok = tiny_tokenizer
    raw_f = build_examples(synth, tok, "forget", "raw", 64)
    assert len(raw_f) == 24 and all(e["labels"] == e["input_ids"] for e in raw_f)
    assert all(e["input_ids"][0] == tok.bos_token_id and len(e["input_ids"]) <= 64 for e in raw_f)
    raw_r = build_examples(synth, tok, "retain", "raw", 64)
    assert len(raw_r) == 24 and raw_r != raw_f
    chunks = build_examples(synth, tok, "forget", "chunks", 64)
    assert all(len(c["input_ids"]) == 64 and c["input_ids"][0] == tok.bos_token_id for c in chunks)
    n_tok = len(tok(synth.raw_text("forget"), add_special_tokens=False)["input_ids"])
    assert len(chunks) == -(-n_tok // 63)
    dia = build_examples(synth, tok, "forget", "dialogue", 128)
    assert len(dia) == 56
    for e in dia:
        assert e["labels"][0] == IGNORE_INDEX and any(lab != IGNORE_INDEX for lab in e["labels"])
    qa = build_examples(synth, tok, "retain", "qa", 128)
    assert len(qa) == 48
    row = synth.dialogue("retain")[0]
    expected = tok(f"Question: {row['messages'][0]['content']}\nAnswer:", add_special_tokens=True)["input_ids"]
    assert qa[0]["input_ids"][: len(expected)] == expected
    assert all(lab == IGNORE_INDEX for lab in qa[0]["labels"][: len(expected)])
    with pytest.raises(ValueError, match="source"):
        build_examples(synth, tok, "forget", "pdf", 64)
    with pytest.raises(ValueError, match="split"):
        build_examples(synth, tok, "holdout", "dialogue", 64)


def test_build_mixture_examples(synth, tiny_tokenizer, tmp_path):
    ex = build_mixture_examples(synth.path("train/target_mix.jsonl"), tiny_tokenizer, 128)
    rows = [json.loads(x) for x in synth.path("train/target_mix.jsonl").read_text().splitlines()]
    assert len(ex) == len(rows)
    for e, r in zip(ex, rows):
        assert e["labels"] == e["input_ids"]  # loss on all tokens, dialogues included (docs/benchmarks.md, "Base-training mixtures")
    bad = _write(tmp_path, "mix.jsonl", [{"text": "ok"}, {"prompt": "no"}])
    with pytest.raises(BenchmarkError, match=r"mix\.jsonl: line 2"):
        build_mixture_examples(bad, tiny_tokenizer, 64)


def test_relearn_subset_seeded_and_nested():
    xs = list(range(40))
    a = relearn_subset(xs, 0.25, seed=3)
    assert len(a) == 10 and a == relearn_subset(xs, 0.25, seed=3) and a == sorted(a)
    assert set(a) <= set(relearn_subset(xs, 0.5, seed=3))
    assert relearn_subset(xs, 1.0, seed=3) == xs
    assert a != relearn_subset(xs, 0.25, seed=4)
    assert len(relearn_subset([1, 2, 3], 0.1, seed=0)) == 1
    with pytest.raises(ValueError):
        relearn_subset(xs, 0.0, seed=0)


def test_forget_fingerprint(synth, good):
    fp = forget_fingerprint(synth)
    assert fp == forget_fingerprint(Benchmark(synth.root)) and len(fp) == 64
    assert fp != forget_fingerprint(synth, "retain")
    assert forget_fingerprint(synth, "forget", "dialogue") != forget_fingerprint(synth, "retain", "dialogue")
    assert len(split_texts(synth, "forget", "raw")) == 24
    assert fp != forget_fingerprint(Benchmark(good))
