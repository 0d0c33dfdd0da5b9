"""Real-benchmark loaders (MUSE-News/Books, WMDP dialogue) on tiny fixtures in the Hub's exact file layout.

No network: fixtures live in tests/fixtures/hub/<owner>/<name> (regenerate with make_fixtures.py). Each loader
must produce the one on-disk format (docs/benchmarks.md, "On-disk format", "WMDP", "PRISM's dialogue setting") that ``data.formats.Benchmark`` validates.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from robust_unlearning.data.formats import Benchmark
from robust_unlearning.data.hub import HubDatasetError, load_config, resolve_source
from robust_unlearning.data.muse import prepare_muse
from robust_unlearning.data.wmdp import prepare_wmdp_dialogue, split_half, validate_dialogue_file
from robust_unlearning.utils.io import DataFormatError, read_json, read_jsonl, sha256_file

HUB = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
NEWS = HUB / "muse-bench" / "MUSE-News"
BOOKS = HUB / "muse-bench" / "MUSE-Books"
REPO = Path(__file__).resolve().parents[2]


def _parquet_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _texts(path: Path) -> list[str]:
    return [r["text"] for r in _parquet_rows(path)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def news(tmp_path_factory, cache) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("news") / "data"
    manifest = prepare_muse("muse_news", {"name": "muse_news", "source": str(HUB), "cache_dir": cache}, out)
    return out, manifest


@pytest.fixture(scope="module")
def books(tmp_path_factory, cache) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("books") / "data"
    manifest = prepare_muse("muse_books", {"name": "muse_books", "source": str(BOOKS), "cache_dir": cache}, out)
    return out, manifest


@pytest.fixture(scope="module")
def wmdp(tmp_path_factory, cache) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("wmdp") / "data"
    manifest = prepare_wmdp_dialogue({"name": "wmdp_dialogue", "source": str(HUB), "seed": 0, "cache_dir": cache},
                                     out)
    return out, manifest


# ------------------------------------------------------------------------------------------------ MUSE

EXPECTED_MUSE_FILES = {
    "raw/forget.json", "raw/retain1.json", "raw/retain2.json", "raw/holdout.json",
    "raw/forget.txt", "raw/retain1.txt", "raw/retain2.txt", "raw/holdout.txt",
    "verbmem/forget.json",
    "knowmem/forget_qa.json", "knowmem/forget_qa_icl.json", "knowmem/retain_qa.json", "knowmem/retain_qa_icl.json",
    "privleak/forget.json", "privleak/retain.json", "privleak/holdout.json",
}


def test_muse_news_layout_and_benchmark_reads_it(news):
    out, manifest = news
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == EXPECTED_MUSE_FILES | {"manifest.json"}
    counts = Benchmark(out).validate()
    assert counts["raw/forget.json"] == 3 and counts["knowmem/retain_qa.json"] == 3
    assert counts["privleak/retain.json"] == 2 and counts["verbmem/forget.json"] == 2
    b = Benchmark(out)
    assert b.raw("forget") == _texts(NEWS / "raw/forget-00000-of-00001.parquet")
    assert b.verbmem() == _parquet_rows(NEWS / "verbmem/forget-00000-of-00001.parquet")
    assert b.knowmem("retain_qa") == [{"question": r["question"], "answer": r["answer"]}
                                      for r in _parquet_rows(NEWS / "knowmem/retain_qa-00000-of-00001.parquet")]


def test_muse_raw_txt_is_documents_joined_by_blank_line(news):
    out, _ = news
    for split in ("forget", "retain1", "retain2", "holdout"):
        docs = read_json(out / f"raw/{split}.json")
        assert (out / f"raw/{split}.txt").read_text(encoding="utf-8") == "\n\n".join(docs)


def test_muse_reads_only_the_splits_the_dataset_card_declares(news):
    """The real repo still carries superseded files (privleak/retain2 parquet, JSON copies); they are ignored."""
    out, manifest = news
    retain = read_json(out / "privleak/retain.json")
    assert retain == _texts(NEWS / "privleak/retain-00000-of-00001.parquet")
    assert not any("STALE" in t for t in retain + read_json(out / "privleak/forget.json"))
    assert all("STALE" not in q["question"] for q in read_json(out / "knowmem/forget_qa.json"))
    assert manifest["sources"]["muse"]["split_map"]["privleak/retain.json"] == "privleak/retain"


def test_muse_manifest_records_sources_sizes_and_hashes(news):
    out, manifest = news
    assert manifest == read_json(out / "manifest.json")
    src = manifest["sources"]["muse"]
    assert src["dataset"] == "muse-bench/MUSE-News" and src["source"] == str(NEWS)
    assert "revision" in src and src["resolved_revision"]
    assert set(src["configs"]) == {"raw", "verbmem", "knowmem", "privleak"}
    assert set(manifest["files"]) == EXPECTED_MUSE_FILES
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(out / rel), rel
        assert entry["bytes"] == (out / rel).stat().st_size
    assert manifest["sizes"]["knowmem/forget_qa_icl.json"] == 2


def test_muse_books_old_split_names_are_accepted(books):
    out, manifest = books
    Benchmark(out).validate()
    split_map = manifest["sources"]["muse"]["split_map"]
    assert split_map["knowmem/retain_qa.json"] == "knowmem/retain2_qa"
    assert split_map["knowmem/retain_qa_icl.json"] == "knowmem/retain2_qa_icl"
    assert split_map["privleak/retain.json"] == "privleak/retain2"
    assert read_json(out / "privleak/retain.json") == _texts(BOOKS / "privleak/retain2-00000-of-00001.parquet")
    assert (out / "knowmem/retain_qa.json").is_file() and not (out / "knowmem/retain2_qa.json").exists()


def test_muse_json_copy_without_dataset_card(tmp_path, news, cache):
    """A local copy stored as JSON (list[str] / list[dict], hyphenated names as in the repo's JSON uploads,
    no README configs) gives byte-identical output files."""
    src = tmp_path / "MUSE-News-json"
    out_news, _ = news
    for rel in EXPECTED_MUSE_FILES:
        if rel.endswith(".txt"):
            continue
        target = src / rel
        if rel.startswith("knowmem/"):
            target = target.with_name(target.name.replace("_", "-"))   # forget-qa.json, retain-qa-icl.json
        if rel == "privleak/retain.json":
            target = target.with_name("retain2.json")                   # older spelling
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out_news / rel, target)
    out = tmp_path / "data"
    manifest = prepare_muse("muse_news", {"source": str(src), "cache_dir": cache}, out)
    Benchmark(out).validate()
    assert manifest["sources"]["muse"]["configs"]["raw"]["loader"] == "files"
    for rel in EXPECTED_MUSE_FILES:
        assert (out / rel).read_bytes() == (out_news / rel).read_bytes(), rel


def test_missing_split_names_dataset_split_and_alternatives(tmp_path, cache):
    src = tmp_path / "broken"
    shutil.copytree(NEWS, src)
    (src / "README.md").unlink()
    for p in (src / "privleak").glob("retain*"):
        p.unlink()
    with pytest.raises(HubDatasetError) as err:
        prepare_muse("muse_news", {"source": str(src), "cache_dir": cache}, tmp_path / "out")
    msg = str(err.value)
    assert "muse-bench/MUSE-News" in msg and "privleak" in msg and "'retain'" in msg and "'retain2'" in msg
    assert not (tmp_path / "out").exists()


def test_failed_prepare_leaves_existing_output_untouched(tmp_path, cache):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    src = tmp_path / "empty"
    src.mkdir()
    with pytest.raises(HubDatasetError):
        prepare_muse("muse_news", {"source": str(src), "cache_dir": cache}, out)
    assert (out / "keep.txt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp dirs left


def test_bad_field_type_names_dataset_config_split_row(tmp_path, news, cache):
    out_news, _ = news
    src = tmp_path / "bad"
    for rel in EXPECTED_MUSE_FILES:
        if rel.endswith(".json"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out_news / rel, src / rel)
    (src / "knowmem/forget_qa.json").write_text(json.dumps([{"question": "q?", "answer": 3}]))
    with pytest.raises(DataFormatError, match=r"knowmem.*forget_qa.*row 0.*'answer' must be a string"):
        prepare_muse("muse_news", {"source": str(src), "cache_dir": cache}, tmp_path / "out")


def test_unreadable_local_copy_is_wrapped_with_the_cause(tmp_path, cache):
    """datasets reads all splits of a config with one schema; a broken file surfaces with its cause."""
    src = tmp_path / "bad"
    shutil.copytree(NEWS, src)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([{"question": "q?", "answer": 3}]),
                   src / "knowmem/forget_qa-00000-of-00001.parquet")
    with pytest.raises(HubDatasetError, match=r"muse-bench/MUSE-News.*config 'knowmem'.*caused by") as err:
        prepare_muse("muse_news", {"source": str(src), "cache_dir": cache}, tmp_path / "out")
    assert "local directory" in str(err.value)


def test_resolve_source():
    assert resolve_source(None, "muse-bench/MUSE-News") == ("muse-bench/MUSE-News", False)
    assert resolve_source(str(HUB), "muse-bench/MUSE-News") == (str(NEWS), True)        # mirror root
    assert resolve_source(str(NEWS), "muse-bench/MUSE-News") == (str(NEWS), True)       # the copy itself
    assert resolve_source("someone/MUSE-News-fork", "muse-bench/MUSE-News") == ("someone/MUSE-News-fork", False)
    with pytest.raises(HubDatasetError, match="neither an existing directory"):
        resolve_source("/no/such/dir", "muse-bench/MUSE-News")


def test_offline_missing_dataset_fails_fast_with_remedy(tmp_path):
    """HF_HUB_OFFLINE=1 + an id that is not cached: a clear error at once (no retry loop, no hang)."""
    code = ("from robust_unlearning.data.muse import prepare_muse\n"
            f"prepare_muse('muse_news', {{'source': 'no-such-org/no-such-dataset', 'cache_dir': {str(tmp_path)!r}}},"
            f" {str(tmp_path / 'out')!r})\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode != 0
    assert "HubDatasetError" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "dataset 'no-such-org/no-such-dataset'" in last
    assert "HF_TOKEN" in last and "licence" in last and "local directory" in last
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_load_config_unwraps_mmlu_auxiliary_train_rows(tmp_path):
    src = tmp_path / "mmlu"
    (src / "auxiliary_train").mkdir(parents=True)
    row = {"question": "q?", "subject": "", "choices": ["a", "b", "c", "d"], "answer": 1}
    (src / "auxiliary_train" / "train.jsonl").write_text(json.dumps({"train": row}) + "\n")
    cfg = load_config("cais/mmlu", "auxiliary_train", source=str(src))
    assert cfg.splits == {"train": [row]}


# ------------------------------------------------------------------------------------------------ WMDP

def test_wmdp_layout_and_benchmark_reads_it(wmdp):
    out, manifest = wmdp
    counts = Benchmark(out).validate()
    assert counts["mcq/forget.jsonl"] == 5 and counts["mcq/wmdp-bio.jsonl"] == 10
    assert counts["dialogue/forget.jsonl"] == 5 and counts["dialogue/retain.jsonl"] == 5
    assert counts["mmlu/test.jsonl"] == 6 and counts["mcq/retain.jsonl"] == 6 and counts["mmlu/dev.jsonl"] == 2
    b = Benchmark(out)
    assert [r["subject"] for r in b.mcq("mmlu/test")][:2] == ["high_school_geography", "astronomy"]
    assert manifest["sources"]["wmdp"]["id"] == "cais/wmdp" and manifest["sources"]["mmlu"]["id"] == "cais/mmlu"
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(out / rel), rel


def test_wmdp_split_halves_forget_dialogues_and_eval_mcq(wmdp):
    out, manifest = wmdp
    full = _parquet_rows(HUB / "cais/wmdp/wmdp-bio/test-00000-of-00001.parquet")
    split = manifest["sources"]["split"]
    train, evl = split["train"], split["eval"]
    assert sorted(train + evl) == list(range(len(full))) and not set(train) & set(evl)
    assert abs(len(train) - len(evl)) <= 1 and split["seed"] == 0
    assert (train, evl) == split_half(len(full), 0)
    mcq = read_jsonl(out / "mcq/forget.jsonl")
    assert [{k: r[k] for k in ("question", "choices", "answer")} for r in mcq] == \
        [{k: full[i][k] for k in ("question", "choices", "answer")} for i in evl]
    forget = read_jsonl(out / "dialogue/forget.jsonl")
    assert forget == [{"messages": [{"role": "user", "content": full[i]["question"]},
                                    {"role": "assistant", "content": full[i]["choices"][full[i]["answer"]]}]}
                      for i in train]
    eval_q = {r["question"] for r in mcq}
    assert not eval_q & {d["messages"][0]["content"] for d in forget}


def test_wmdp_retain_dialogues_from_mmlu_auxiliary_train(wmdp):
    out, manifest = wmdp
    aux = _parquet_rows(HUB / "cais/mmlu/all/auxiliary_train-00000-of-00001.parquet")
    answers = {r["question"]: r["choices"][r["answer"]] for r in aux}
    retain = read_jsonl(out / "dialogue/retain.jsonl")
    qs = [d["messages"][0]["content"] for d in retain]
    assert len(retain) == len(read_jsonl(out / "dialogue/forget.jsonl"))
    assert len(set(qs)) == len(qs) and all(len(q) <= 512 for q in qs)
    assert all(d["messages"][1]["content"] == answers[q] for d, q in zip(retain, qs))
    assert manifest["sources"]["dialogue"] == {"kind": "reconstruction", "retain_pool": 14, "retain_max_chars": 512}


def test_wmdp_is_deterministic_per_seed(tmp_path, wmdp, cache):
    out0, _ = wmdp
    again = tmp_path / "again"
    prepare_wmdp_dialogue({"source": str(HUB), "seed": 0, "cache_dir": cache}, again)
    for rel in ("mcq/forget.jsonl", "dialogue/forget.jsonl", "dialogue/retain.jsonl", "manifest.json"):
        if rel == "manifest.json":
            a, b = read_json(out0 / rel), read_json(again / rel)
            assert a["files"] == b["files"]
        else:
            assert (out0 / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "seed1"
    m1 = prepare_wmdp_dialogue({"source": str(HUB), "seed": 1, "cache_dir": cache}, other)
    assert m1["sources"]["split"]["train"] != read_json(out0 / "manifest.json")["sources"]["split"]["train"]


def test_wmdp_reads_benchmark_source_with_the_schema_defaults_filled_in(tmp_path, wmdp, cache):
    """The config schema fills in ``wmdp_source: null`` (= "as benchmark.source"): the mirror root is still read,
    with pinned revisions too (found by the CPU dress rehearsal of the wmdp_bio preset, which read the Hub)."""
    import yaml

    from robust_unlearning.config import validate_config

    cfg = yaml.safe_load((REPO / "workflow" / "presets" / "wmdp_bio.yaml").read_text())
    cfg["benchmark"].update(source=str(HUB), cache_dir=cache)
    cfg = validate_config(cfg)
    assert cfg["benchmark"]["wmdp_source"] is None and cfg["benchmark"]["revision"]
    out = tmp_path / "data"
    manifest = prepare_wmdp_dialogue(cfg["benchmark"], out)
    assert (out / "mcq" / "forget.jsonl").read_bytes() == (wmdp[0] / "mcq" / "forget.jsonl").read_bytes()
    assert manifest["sources"]["wmdp"]["source"] == str(HUB / "cais" / "wmdp")


def _write_dialogues(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_wmdp_user_dialogues_replace_the_reconstruction(tmp_path, cache):
    d = tmp_path / "prism"
    d.mkdir()
    turn = lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a},
                                      {"role": "user", "content": "ignored third turn"}]}
    _write_dialogues(d / "forget.jsonl", [turn("paraphrased fixture question 1?", "answer 1")])
    _write_dialogues(d / "retain.jsonl", [turn("general question?", "general answer")])
    out = tmp_path / "data"
    manifest = prepare_wmdp_dialogue({"source": str(HUB), "seed": 0, "cache_dir": cache, "dialogue_dir": str(d)},
                                     out)
    Benchmark(out).validate()
    assert manifest["sources"]["dialogue"]["kind"] == "user"
    forget = read_jsonl(out / "dialogue/forget.jsonl")
    assert forget == [{"messages": [{"role": "user", "content": "paraphrased fixture question 1?"},
                                    {"role": "assistant", "content": "answer 1"}]}]


@pytest.mark.parametrize("bad, match", [
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
     r"line 2: messages\[0\]\.role must be 'user'"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"line 2: 'messages' needs a user and an assistant"),
    ({"text": "no messages"}, r"line 2: expected an object with a 'messages' list"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
     r"line 2: messages\[1\]\.content must be a non-empty string"),
])
def test_user_dialogue_schema_errors_name_file_and_line(tmp_path, bad, match):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "forget.jsonl"
    _write_dialogues(path, [good, bad])
    with pytest.raises(DataFormatError, match=match) as err:
        validate_dialogue_file(path)
    assert str(path) in str(err.value)


def test_user_dialogues_need_both_files(tmp_path, cache):
    d = tmp_path / "prism"
    d.mkdir()
    _write_dialogues(d / "forget.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataFormatError, match="both forget.jsonl and retain.jsonl"):
        prepare_wmdp_dialogue({"source": str(HUB), "cache_dir": cache, "dialogue_dir": str(d)}, tmp_path / "o")


def test_wmdp_jailbreak_files_are_copied_and_prefill_overlap_counted(tmp_path, cache):
    root = tmp_path / "mirror"
    shutil.copytree(HUB / "cais", root / "cais")
    (root / "jailbreak").mkdir()
    full = _parquet_rows(HUB / "cais/wmdp/wmdp-bio/test-00000-of-00001.parquet")
    train, _ = split_half(len(full), 0)
    rows = [{"messages": [{"role": "user", "content": full[i]["question"]}, {"role": "assistant", "content": "x"}]}
            for i in range(len(full))]
    rows.append({"messages": [{"role": "user", "content": "unrelated"}, {"role": "assistant", "content": "y"}]})
    _write_dialogues(root / "jailbreak" / "llama_harmful-prefix.jsonl", rows)   # PRISM's file name
    out = tmp_path / "data"
    manifest = prepare_wmdp_dialogue({"source": str(root), "seed": 0, "cache_dir": cache}, out)
    assert len(Benchmark(out).prefill()) == len(rows)
    assert manifest["sources"]["prefill_overlap"] == {"prefill_items": len(rows), "in_wmdp": len(full),
                                                      "in_train_half": len(train)}


def test_prepare_benchmark_dispatches_to_the_real_loaders(tmp_path, cache):
    from robust_unlearning.data.prepare import prepare_benchmark

    m = prepare_benchmark({"name": "muse_books", "source": str(HUB), "cache_dir": cache}, tmp_path / "b")
    assert m["benchmark"] == "muse_books"
    m = prepare_benchmark({"name": "wmdp_dialogue", "source": str(HUB), "seed": 3, "cache_dir": cache},
                          tmp_path / "w")
    assert m["benchmark"] == "wmdp_dialogue" and m["seed"] == 3


# ------------------------------------------------------------------------------------------------ presets

PRESETS = ["muse_news", "muse_books", "wmdp_bio"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_a_complete_valid_config(preset):
    import yaml

    from robust_unlearning.config import attack_settings, unlearn_runs, validate_config

    raw = yaml.safe_load((REPO / "workflow" / "presets" / f"{preset}.yaml").read_text())
    cfg = validate_config(raw)
    assert cfg["model"]["source"] == "hub" and cfg["model"]["dtype"] == "bfloat16"
    methods = {r.method for r in unlearn_runs(cfg)}
    assert {"prism", "sam_npo", "npo"} <= methods
    assert attack_settings(cfg)


PUBLISHED = {  # docs/methods.md, "PRISM keys" (PRISM) / docs/methods.md, "SAM+NPO" (SAM+NPO)
    "muse_news": dict(model="muse-bench/MUSE-News_target", epochs=10, lam_r=1.0, rho=0.011, gamma=0.085, layer=24,
                      sam_rho=0.01, probe_batch=16),
    "muse_books": dict(model="muse-bench/MUSE-Books_target", epochs=1, lam_r=2.5, rho=0.008, gamma=0.05, layer=32,
                       sam_rho=0.01, probe_batch=16),
    "wmdp_bio": dict(model="mistralai/Ministral-8B-Instruct-2410", epochs=10, lam_r=1.0, rho=0.008, gamma=0.05,
                     layer=28, sam_rho=0.01, probe_batch=256),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_uses_the_published_hyperparameters(preset):
    import yaml

    cfg = yaml.safe_load((REPO / "workflow" / "presets" / f"{preset}.yaml").read_text())
    want = PUBLISHED[preset]
    assert cfg["model"]["name_or_path"] == want["model"]
    train = cfg["unlearning"]["train"]
    assert train["epochs"] == want["epochs"] and train["max_len"] == 2048
    assert train["batch_size"] * train.get("grad_accum", 1) == 4
    prism = cfg["unlearning"]["methods"]["prism"]
    assert float(prism["lr"][0]) == 1e-5 and prism["beta"] == [0.1]
    assert prism["lambda_r"] == want["lam_r"] and prism["rho"] == [want["rho"]]
    assert prism["gamma_max"] == [want["gamma"]]
    assert cfg["probe"]["layers"] == [want["layer"]] and cfg["probe"]["batch_size"] == want["probe_batch"]
    assert float(cfg["probe"]["lr"]) == 1e-4 and cfg["probe"]["eps"] == 0.01 and cfg["probe"]["adv_alpha"] == 0.4
    assert cfg["unlearning"]["methods"]["sam_npo"]["rho"] == [want["sam_rho"]]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_dry_run_plans_the_grid_offline(preset):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["snakemake", "-n", "--configfile", f"workflow/presets/{preset}.yaml", "--cores", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("prepare_data", "cache_base_model", "train_probe", "unlearn", "attack_model", "evaluate",
                 "aggregate"):
        assert rule in out, f"{rule} not planned:\n{out[-3000:]}"
