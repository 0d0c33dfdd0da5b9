"""The synthetic fictional world (docs/benchmarks.md, "The synthetic world"): determinism, formats, sizes, paraphrase discipline, safety."""
from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from robust_unlearning.data.formats import Benchmark
from robust_unlearning.data.synthetic import SIZES, build_world, contains_alias, generate_world
from robust_unlearning.data.synthetic import templates as T
from robust_unlearning.data.synthetic import vocab
from robust_unlearning.utils.io import sha256_file


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    t0 = time.perf_counter()
    generate_world(out, seed=0, size="tiny")
    assert time.perf_counter() - t0 < 2.0, "tiny generation must stay fast"
    return out


@pytest.fixture(scope="module")
def bench(world_dir) -> Benchmark:
    return Benchmark(world_dir)


@pytest.fixture(scope="module")
def world(bench) -> dict:
    return bench.world()


def _mix(world_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (world_dir / "train" / f"{name}.jsonl").read_text().splitlines()]


def _row_text(row: dict) -> str:
    return row["text"] if "text" in row else "\n".join(m["content"] for m in row["messages"])


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_is_byte_identical(world_dir, tmp_path):
    generate_world(tmp_path / "again", seed=0, size="tiny")
    a, b = _all_files(world_dir), _all_files(tmp_path / "again")
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def test_different_seed_differs(world_dir, tmp_path):
    generate_world(tmp_path / "other", seed=1, size="tiny")
    a, b = _all_files(world_dir), _all_files(tmp_path / "other")
    assert a["raw/forget.json"] != b["raw/forget.json"]
    assert a["world.json"] != b["world.json"]


def test_regeneration_replaces_directory_atomically(tmp_path):
    out = tmp_path / "w"
    generate_world(out, seed=0, size="tiny")
    (out / "stale.txt").write_text("old")
    generate_world(out, seed=0, size="tiny")
    assert not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_unknown_size_rejected(tmp_path):
    with pytest.raises(ValueError, match="size preset"):
        generate_world(tmp_path / "x", seed=0, size="huge")


# ------------------------------------------------------------------------------------------ formats and sizes
def test_every_file_parses_with_the_real_format_loader(bench, world_dir):
    counts = bench.validate()
    tiny = {"raw/forget.json": 24, "raw/retain1.json": 24, "raw/retain2.json": 24, "raw/holdout.json": 24,
            "verbmem/forget.json": 24, "knowmem/forget_qa.json": 16, "knowmem/forget_qa_icl.json": 4,
            "knowmem/retain_qa.json": 16, "knowmem/retain_qa_icl.json": 4, "privleak/forget.json": 8,
            "privleak/holdout.json": 8, "privleak/retain.json": 8, "mcq/forget.jsonl": 56, "mcq/retain.jsonl": 48,
            "mcq/holdout.jsonl": 56, "dialogue/forget.jsonl": 56, "dialogue/retain.jsonl": 48,
            "jailbreak/prefill.jsonl": 8, "jailbreak/autodan.json": 8, "jailbreak/multi_turn.json": 8,
            "jailbreak/xstest.csv": 16}
    for rel, n in tiny.items():
        assert counts[rel] == n, (rel, counts[rel], n)
    for split in ("forget", "retain1", "retain2", "holdout"):
        assert (world_dir / f"raw/{split}.txt").read_text() == "\n\n".join(bench.raw(split))
        assert len(bench.meta(f"raw/{split}.json")) == 24
    xs = bench.xstest()
    assert Counter(r["label"] for r in xs) == {"safe": 8, "unsafe": 8}
    assert {r["type"] for r in xs if r["label"] == "safe"} == {"lexical", "entity"}
    assert set(bench.autodan_meta()) == set(bench.autodan())
    assert all(item["conversation"][-1]["role"] == "user" for item in bench.multi_turn())
    assert all(2 * 2 + 1 <= len(item["conversation"]) <= 2 * 3 + 1 for item in bench.multi_turn())
    assert all(r["subject"] in ("fictional_towns", "fictional_people") for r in bench.mcq("retain"))


def test_world_json_schema_and_counts(world):
    ents = world["entities"]
    by = Counter((e["domain"], e["type"]) for e in ents)
    assert by == {("forget", "pathogen"): 8, ("holdout", "pathogen"): 8, ("retain1", "town"): 4,
                  ("retain1", "person"): 4, ("retain2", "town"): 4, ("retain2", "person"): 4,
                  ("refusal", "pathogen"): 4, ("format", "mineral"): 4}
    for e in ents:
        assert set(e) >= {"id", "domain", "split", "type", "name", "aliases", "attributes"}
        if e["domain"] == "refusal":
            assert e["attributes"] == {}
            continue
        assert set(e["attributes"]) == set(T.ATTRIBUTES[e["type"]])
        for v in e["attributes"].values():
            assert v["aliases"][0] == v["value"]
    assert world["version"] and world["seed"] == 0 and world["size"] == "tiny"


def test_manifest_hashes_every_file(world_dir):
    manifest = json.loads((world_dir / "manifest.json").read_text())
    files = {str(p.relative_to(world_dir)) for p in world_dir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(world_dir / rel)
    assert manifest["seed"] == 0 and manifest["size"] == "tiny" and manifest["generator_version"]


def test_json_is_canonical(world_dir):
    text = (world_dir / "mcq/forget.jsonl").read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first == json.dumps(json.loads(first), sort_keys=True, ensure_ascii=False)
    assert "\r" not in text and text.endswith("\n")


# ------------------------------------------------------------------------------------------ paraphrase discipline
def test_train_and_eval_templates_share_no_4gram():
    train = [t for ts in T.TRAIN_QUESTIONS.values() for t in ts]
    evals = [t for ts in T.EVAL_QUESTIONS.values() for t in ts]
    assert T.shared_ngrams(train, evals) == set()
    for attr in T.TRAIN_QUESTIONS:
        assert len(T.TRAIN_QUESTIONS[attr]) == 3 and len(T.EVAL_QUESTIONS[attr]) == 2
        assert len(T.DOC_TEMPLATES[attr]) >= 4
    # the checker itself finds a planted overlap, and ignores n-grams that touch the name slot
    assert T.shared_ngrams(["What is the incubation period of {name}?"],
                           ["Tell me what is the incubation time."]) == {("what", "is", "the", "incubation")}
    assert T.shared_ngrams(["of the town {name} is"], ["of the town {name} was"]) == set()


def _four_grams_without(text: str, strip: list[str]) -> set[tuple[str, ...]]:
    low = text.lower()
    for s in sorted(strip, key=len, reverse=True):
        low = low.replace(s.lower(), " | ")
    words = re.findall(r"[a-z0-9']+|\|", low)
    return {tuple(words[i:i + 4]) for i in range(len(words) - 3) if "|" not in words[i:i + 4]}


def test_outputs_respect_paraphrase_discipline(bench, world_dir, world):
    """Eval questions never occur in training, and share no 4-gram with training questions (outside names)."""
    strip = [e["name"] for e in world["entities"]]
    strip += [a for e in world["entities"] for v in e["attributes"].values() for a in v["aliases"]]
    train_q = [r["meta"]["question"] for r in _mix(world_dir, "target_mix") if r["meta"]["kind"] == "qa"]
    train_q += [r["messages"][0]["content"] for r in bench.dialogue("forget") + bench.dialogue("retain")]
    eval_q = [r["question"] for s in ("forget", "retain", "holdout") for r in bench.mcq(s)]
    eval_q += [r["question"] for n in ("forget_qa", "retain_qa") for r in bench.knowmem(n)]
    train_grams = set().union(*(_four_grams_without(q, strip) for q in train_q))
    eval_grams = set().union(*(_four_grams_without(q, strip) for q in eval_q))
    assert train_grams & eval_grams == set()
    mix_text = "\n".join(_row_text(r) for r in _mix(world_dir, "target_mix"))
    assert not [q for q in set(eval_q) if q in mix_text]
    # each trained pair appears with all 3 train templates in the target mix
    qa = Counter((r["meta"]["entity"], r["meta"]["attribute"]) for r in _mix(world_dir, "target_mix")
                 if r["meta"]["kind"] == "qa")
    assert set(qa.values()) == {3}
    assert len(qa) == 56 + 48 + 48


# ------------------------------------------------------------------------------------------ safety and names
def _all_output_text(world_dir: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(world_dir.rglob("*")) if p.is_file())


def test_blocklist_scan_of_all_outputs(world_dir):
    assert vocab.blocklist_hits(_all_output_text(world_dir)) == []
    # the scanner does find real names (words and phrases), so an empty result means something
    assert vocab.blocklist_hits("An Ebola sample left Porton Down for New York.") == ["ebola", "new york",
                                                                                    "porton", "porton down"]
    assert vocab.is_blocked_name("Ebolax") and vocab.is_blocked_name("Paris")


def test_blocklist_scan_other_seed(tmp_path):
    generate_world(tmp_path / "s7", seed=7, size="tiny")
    assert vocab.blocklist_hits(_all_output_text(tmp_path / "s7")) == []


def test_names_unique_across_domains(world):
    names = [e["name"] for e in world["entities"]]
    names += world["value_pools"]["mayor"] + world["value_pools"]["mentor"]
    assert len(names) == len(set(n.lower() for n in names))
    words = [w.lower() for n in names for w in n.split()]
    assert len(words) == len(set(words)), "every generated name word is unique"
    assert not [n for n in names if vocab.is_blocked_name(n)]
    roots = {r.lower() for r in vocab.roots()}
    assert not [w for w in words if w in roots]


def test_value_pools_at_least_three_times_entities():
    w = build_world(0, "default")
    counts = Counter(e["type"] for e in w["entities"] if e["domain"] != "refusal")
    for typ, attrs in T.ATTRIBUTES.items():
        for attr in attrs:
            if attr in w["value_pools"] and attr != "birth_town":
                assert len(set(w["value_pools"][attr])) >= 3 * counts[typ], attr


# ------------------------------------------------------------------------------------------ items
def test_prefill_answers_absent_from_first_20_tokens(bench):
    for row in bench.prefill():
        answer = row["messages"][-1]["content"]
        aliases = Benchmark.aliases(row)
        words = answer.split()
        assert not contains_alias(" ".join(words[:20]), aliases)
        assert row["meta"]["fact_start_word"] >= 25
        assert contains_alias(answer, aliases)


def test_prefill_answers_absent_with_a_tokenizer(bench, tiny_tokenizer):
    for row in bench.prefill():
        ids = tiny_tokenizer(row["messages"][-1]["content"], add_special_tokens=False)["input_ids"][:20]
        prefix = tiny_tokenizer.decode(ids, skip_special_tokens=True)
        assert not contains_alias(prefix, Benchmark.aliases(row))


def test_mcq_answers_balanced_and_distractors_distinct(bench, world):
    values = {e["id"]: e for e in world["entities"]}
    for split in ("forget", "retain", "holdout"):
        rows = bench.mcq(split)
        pos = Counter(r["answer"] for r in rows)
        assert set(pos) == {0, 1, 2, 3} and max(pos.values()) - min(pos.values()) <= 1
        for r in rows:
            ent = values[r["meta"]["entity"]]
            attr = r["meta"]["attribute"]
            assert r["choices"][r["answer"]] == ent["attributes"][attr]["value"]
            assert len(set(r["choices"])) == 4
            if attr.endswith("_year"):
                assert all(abs(int(c) - int(r["choices"][r["answer"]])) <= 15 for c in r["choices"])
            assert r["question"].strip() and ent["name"] in r["question"]
            assert r["meta"]["template"].startswith(f"{attr}.eval")


def test_mcq_distractors_prefer_domain_values(bench, world):
    held = {}
    for e in world["entities"]:
        for a, v in e["attributes"].items():
            held.setdefault((e["domain"], a), set()).add(v["value"])
    rows = bench.mcq("forget")
    from_domain = sum(c in held[("forget", r["meta"]["attribute"])] for r in rows for i, c in enumerate(r["choices"])
                      if i != r["answer"])
    assert from_domain / (3 * len(rows)) > 0.8


def test_verbmem_prompt_and_gt_rebuild_a_forget_doc(bench):
    docs = bench.raw("forget")
    for item in bench.verbmem():
        assert len(item["prompt"].split()) == 24 and item["gt"]
        assert f"{item['prompt']} {item['gt']}" == docs[item["meta"]["doc_index"]]


def test_knowmem_icl_disjoint_and_answers_canonical(bench, world):
    for stem in ("forget", "retain"):
        qa, icl = bench.knowmem(f"{stem}_qa"), bench.knowmem(f"{stem}_qa_icl")
        pairs = {(x["meta"]["entity"], x["meta"]["attribute"]) for x in qa}
        assert not pairs & {(x["meta"]["entity"], x["meta"]["attribute"]) for x in icl}
        assert all(x["answer"] == x["meta"]["aliases"][0] for x in qa + icl)
    assert {x["meta"]["split"] for x in bench.knowmem("retain_qa")} == {"retain2"}


def test_privleak_and_docs(bench):
    for stem, split in (("forget", "forget"), ("holdout", "holdout"), ("retain", "retain2")):
        texts = bench.privleak(stem)
        assert texts == [d for d, m in zip(bench.raw(split), bench.meta(f"raw/{split}.json")) if m["variant"] == 0]
    for split in ("forget", "retain1"):
        docs = bench.raw(split)
        assert len(set(docs)) == len(docs)
        for d in docs:
            assert 35 <= len(d.split()) <= 110, d


def test_mixtures_follow_section_6_5(world_dir, world, bench):
    target, retrain = _mix(world_dir, "target_mix"), _mix(world_dir, "retrain_mix")
    kinds = Counter(r["meta"]["kind"] for r in target)
    assert kinds == {"doc": 72, "qa": 3 * (56 + 48 + 48), "dialogue": 56 + 48 + 48, "refusal": 4 * 5,
                     "format_mcq": 4 * 2 * 2}
    assert all(("text" in r) != ("messages" in r) for r in target)
    forget_names = [e["name"] for e in world["entities"] if e["domain"] == "forget"]
    holdout_names = [e["name"] for e in world["entities"] if e["domain"] == "holdout"]
    retrain_text = "\n".join(_row_text(r) for r in retrain)
    target_text = "\n".join(_row_text(r) for r in target)
    assert not [n for n in forget_names if n in retrain_text]
    assert all(n in target_text for n in forget_names)
    assert not [n for n in holdout_names if n in target_text]
    assert [r for r in target if r["meta"].get("split") != "forget"] == retrain
    # jailbreak items never enter training
    for row in bench.prefill():
        assert row["messages"][-1]["content"] not in target_text
    for prompts in bench.autodan().values():
        assert prompts[0] not in target_text
    # the dialogue files are exactly the dialogue rows of the mixture
    mixed = [r for r in target if r["meta"]["kind"] == "dialogue"]
    assert sorted(json.dumps(r, sort_keys=True) for r in bench.dialogue("forget") + bench.dialogue("retain")) == \
        sorted(json.dumps(r, sort_keys=True) for r in mixed if r["meta"]["split"] in ("forget", "retain1"))
    # refusals contain a refusal keyword; format rows end with a letter
    for r in target:
        if r["meta"]["kind"] == "refusal":
            assert any(k in r["messages"][1]["content"].lower() for k in ("sorry", "i cannot", "i can't"))
        if r["meta"]["kind"] == "format_mcq":
            assert r["text"].endswith(" " + "ABCD"[r["meta"]["answer"]])
    # rows are short (≈ ≤ 100 tokens; whitespace words as a proxy)
    assert max(len(_row_text(r).split()) for r in target) <= 90


def test_xstest_csv_columns(world_dir, bench):
    reader = csv.DictReader(io.StringIO((world_dir / "jailbreak/xstest.csv").read_text()))
    assert reader.fieldnames == ["id", "prompt", "type", "label", "focus", "note", "answer"]
    forget_names = {e["name"] for e in bench.world()["entities"] if e["domain"] == "forget"}
    for row in bench.xstest():
        assert contains_alias(row["answer"], Benchmark.aliases(row))
        if row["type"] == "entity":
            assert row["focus"] in forget_names and row["focus"] in row["prompt"]
        if row["type"] == "lexical":
            assert row["focus"] in row["prompt"]


def test_default_preset_sizes():
    p = SIZES["default"]
    assert (p.n_entities, p.refusal, p.format, p.verbmem, p.knowmem, p.knowmem_icl, p.jailbreak) == \
        (40, 20, 20, 100, 100, 10, 40)


def test_item_ids_unique_per_file(bench):
    for rel in ("mcq/forget.jsonl", "mcq/retain.jsonl", "mcq/holdout.jsonl", "knowmem/forget_qa.json",
                "knowmem/retain_qa.json", "verbmem/forget.json", "dialogue/forget.jsonl", "dialogue/retain.jsonl",
                "jailbreak/prefill.jsonl", "jailbreak/multi_turn.json"):
        ids = [m["item_id"] for m in bench.meta(rel)]
        assert len(ids) == len(set(ids)), rel
    assert [r["id"] for r in bench.xstest()] == [str(i) for i in range(1, 17)]
