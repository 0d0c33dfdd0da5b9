"""WMDP-bio in PRISM's dialogue setting → the one on-disk benchmark layout (docs/benchmarks.md, "WMDP", "PRISM's dialogue setting").

PRISM's forget/retain dialogues were never released, so the default is our public reconstruction:

- ``cais/wmdp`` ``wmdp-bio``/test is split 50/50 with ``benchmark.seed`` into *train* (source of the forget
  dialogues) and *eval* (WMDP accuracy). Accuracy on the full set is contaminated by the forget set and is
  written separately (``mcq/wmdp-bio.jsonl``) so that it can be reported as such;
- forget dialogue: user = WMDP question (train half), assistant = text of its correct choice;
- retain dialogue: user = ``cais/mmlu`` ``auxiliary_train`` question (≤ 512 characters), assistant = text of its
  correct choice; as many as forget dialogues, seeded sample;
- user-supplied ``forget.jsonl``/``retain.jsonl`` (e.g. PRISM's files, obtained with CAIS approval) replace the
  reconstruction after schema validation.

Output::

    mcq/forget.jsonl       WMDP-bio eval half, cais/wmdp rows {question, choices, answer} (+ meta)
    mcq/wmdp-bio.jsonl     the full WMDP-bio test set (contaminated: its train half is the forget set)
    mcq/retain.jsonl       MMLU test (utility), cais/mmlu rows {question, subject, choices, answer}
    mmlu/test.jsonl        same rows (docs/benchmarks.md, "WMDP" layout); mmlu/dev.jsonl when available
    dialogue/forget.jsonl  {"messages": [user, assistant]}
    dialogue/retain.jsonl  same
    jailbreak/*            copied when a local source provides PRISM's jailbreak files
    manifest.json          sources, revisions, split seed and indices, sizes, sha256 per file

Hazard note: WMDP and the jailbreak files hold hazardous-knowledge questions; the loader never logs their text.
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path
from typing import Any

from robust_unlearning.utils.io import DataFormatError, read_jsonl
from robust_unlearning.utils.repro import derive_seed

from .hub import HubDatasetError, LoadedConfig, load_config, resolve_source
from .muse import write_benchmark

LOADER_VERSION = 1
WMDP_ID = "cais/wmdp"
MMLU_ID = "cais/mmlu"
WMDP_SUBSET = "wmdp-bio"
MMLU_CONFIG = "all"
RETAIN_MAX_CHARS = 512
JAILBREAK_FILES = ("prefill.jsonl", "autodan.json", "autodan_meta.json", "multi_turn.json", "xstest.csv")
# PRISM's file names for the same jailbreak data (Tsuzukii/PRISM:Jailbreak/data/)
JAILBREAK_ALIASES = {"llama_harmful-prefix.jsonl": "prefill.jsonl", "mistral_autodan.json": "autodan.json",
                     "llama_multi.json": "multi_turn.json", "xstest_prompts.csv": "xstest.csv"}


# ----------------------------------------------------------------------------------------------- rows

def _mcq_row(cfg: LoadedConfig, split: str, i: int, row: Any, keep_subject: bool) -> dict:
    where = f"dataset '{cfg.dataset_id}' config '{cfg.config}' split '{split}' row {i}"
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected an object, got {type(row).__name__}")
    q, choices, ans = row.get("question"), row.get("choices"), row.get("answer")
    if isinstance(ans, str) and ans.strip().upper() in ("A", "B", "C", "D"):
        ans = "ABCD".index(ans.strip().upper())
    if not isinstance(q, str) or not q.strip():
        raise DataFormatError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise DataFormatError(f"{where}: field 'choices' must be a list of 4 strings")
    if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < 4:
        raise DataFormatError(f"{where}: field 'answer' must be an integer 0..3, got {ans!r}")
    out = {"question": q, "choices": list(choices), "answer": int(ans)}
    if keep_subject:
        out["subject"] = row.get("subject") if isinstance(row.get("subject"), str) else ""
    return out


def _dialogue(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def split_half(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded 50/50 split of ``range(n)`` into (train, eval) index lists, each sorted (train gets the odd one)."""
    order = list(range(n))
    random.Random(derive_seed(seed, "wmdp_split")).shuffle(order)
    k = (n + 1) // 2
    return sorted(order[:k]), sorted(order[k:])


def validate_dialogue_file(path: str | Path) -> list[dict]:
    """A user-supplied PRISM dialogue file: one ``{"messages": [{role, content}, ...]}`` per line, the first two
    messages user then assistant with non-empty string contents (only those two are used, as in PRISM).
    Raises DataFormatError naming the file and line."""
    path = Path(path)
    rows = read_jsonl(path)
    text_lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    out = []
    for lineno, row in zip(text_lines, rows):
        where = f"{path}: line {lineno}"
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise DataFormatError(f"{where}: expected an object with a 'messages' list")
        msgs = row["messages"]
        if len(msgs) < 2:
            raise DataFormatError(f"{where}: 'messages' needs a user and an assistant message, got {len(msgs)}")
        for j, (m, role) in enumerate(zip(msgs[:2], ("user", "assistant"))):
            if not isinstance(m, dict):
                raise DataFormatError(f"{where}: messages[{j}] must be an object")
            if m.get("role") != role:
                raise DataFormatError(f"{where}: messages[{j}].role must be '{role}', got {m.get('role')!r}")
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                raise DataFormatError(f"{where}: messages[{j}].content must be a non-empty string")
        out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs[:2]]})
    if not out:
        raise DataFormatError(f"{path}: no dialogues")
    return out


def _norm(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", t).split())


# ----------------------------------------------------------------------------------------------- sources

def _local_root(bench_cfg: dict) -> Path | None:
    src = bench_cfg.get("source")
    if src and Path(str(src)).expanduser().is_dir():
        return Path(str(src)).expanduser()
    return None


def _sources(bench_cfg: dict) -> tuple[Any, Any]:
    """(wmdp source, mmlu source). ``benchmark.source`` may be a mirror root holding ``cais/wmdp`` and
    ``cais/mmlu``, a local copy of ``cais/wmdp`` only, or a Hub id replacing ``cais/wmdp``; ``wmdp_source`` /
    ``mmlu_source`` set them one by one."""
    src = bench_cfg.get("source")
    # the schema fills in wmdp_source: null, which means "as benchmark.source", not "the Hub"
    wmdp_src = bench_cfg.get("wmdp_source") or src
    mmlu_src = bench_cfg.get("mmlu_source")
    if mmlu_src is None and src is not None:
        root = Path(str(src)).expanduser()
        if root.is_dir() and (root / MMLU_ID).is_dir():
            mmlu_src = str(root)
    return wmdp_src, mmlu_src


def _user_dialogues(bench_cfg: dict) -> tuple[Path, Path] | None:
    """User-supplied forget/retain files: ``dialogue_dir`` or ``<source>/dialogue`` or ``<source>``."""
    cands = []
    if bench_cfg.get("dialogue_dir"):
        cands.append(Path(str(bench_cfg["dialogue_dir"])).expanduser())
    root = _local_root(bench_cfg)
    if root is not None:
        cands += [root / "dialogue", root]
    for d in cands:
        f, r = d / "forget.jsonl", d / "retain.jsonl"
        if f.is_file() or r.is_file():
            if not (f.is_file() and r.is_file()):
                raise DataFormatError(f"{d}: user-supplied dialogues need both forget.jsonl and retain.jsonl")
            return f, r
    if bench_cfg.get("dialogue_dir"):
        raise DataFormatError(f"{cands[0]}: dialogue_dir has no forget.jsonl / retain.jsonl")
    return None


def _jailbreak_files(bench_cfg: dict) -> dict[str, Any]:
    root = _local_root(bench_cfg)
    if root is None or not (root / "jailbreak").is_dir():
        return {}
    out: dict[str, Any] = {}
    folder = root / "jailbreak"
    for p in sorted(folder.iterdir()):
        name = JAILBREAK_ALIASES.get(p.name, p.name)
        if name in JAILBREAK_FILES and p.is_file():
            out[f"jailbreak/{name}"] = p.read_text(encoding="utf-8")
    return out


def _prefill_overlap(text: str, mcq: list[dict], train_idx: list[int]) -> dict:
    """How many prefill items ask a WMDP-bio question, and how many of those fall in the train (forget) half
    (docs/benchmarks.md, "PRISM's dialogue setting": their ASR is then measured on questions the model was unlearned on)."""
    all_q = {_norm(r["question"]) for r in mcq}
    train_q = {_norm(mcq[i]["question"]) for i in train_idx}
    users = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        msgs = row.get("messages", []) if isinstance(row, dict) else []
        user = next((m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"), "")
        users.append(_norm(user if isinstance(user, str) else ""))
    return {"prefill_items": len(users), "in_wmdp": sum(u in all_q for u in users),
            "in_train_half": sum(u in train_q for u in users)}


# ----------------------------------------------------------------------------------------------- main

def load_wmdp_dialogue(bench_cfg: dict) -> tuple[dict[str, Any], dict]:
    seed = int(bench_cfg.get("seed", 0) or 0)
    revision = bench_cfg.get("revision")
    cache_dir = bench_cfg.get("cache_dir")
    wmdp_src, mmlu_src = _sources(bench_cfg)
    subset = bench_cfg.get("wmdp_subset", WMDP_SUBSET)

    wmdp = load_config(WMDP_ID, subset, source=wmdp_src, revision=revision, cache_dir=cache_dir)
    got, rows = wmdp.pick(("test",))
    mcq = [_mcq_row(wmdp, got, i, r, keep_subject=False) for i, r in enumerate(rows)]
    if len(mcq) < 2:
        raise DataFormatError(f"dataset '{WMDP_ID}' config '{subset}' split 'test' has {len(mcq)} rows; need >= 2")
    train_idx, eval_idx = split_half(len(mcq), seed)

    files: dict[str, Any] = {}
    train_set = set(train_idx)
    files[f"mcq/{subset}.jsonl"] = [dict(r, meta={"index": i, "half": "train" if i in train_set else "eval"})
                                   for i, r in enumerate(mcq)]
    files["mcq/forget.jsonl"] = [dict(mcq[i], meta={"index": i, "half": "eval"}) for i in eval_idx]

    mmlu = load_config(MMLU_ID, bench_cfg.get("mmlu_config", MMLU_CONFIG), source=mmlu_src,
                       revision=bench_cfg.get("mmlu_revision"), cache_dir=cache_dir)
    mmlu_rows = {}
    for split in ("test", "dev", "auxiliary_train"):
        name, rows = mmlu.pick((split,), required=split != "dev")
        if name is not None:
            mmlu_rows[split] = [_mcq_row(mmlu, name, i, r, keep_subject=True) for i, r in enumerate(rows)]
    files["mmlu/test.jsonl"] = mmlu_rows["test"]
    files["mcq/retain.jsonl"] = mmlu_rows["test"]
    if mmlu_rows.get("dev"):
        files["mmlu/dev.jsonl"] = mmlu_rows["dev"]

    user = _user_dialogues(bench_cfg)
    if user is not None:
        files["dialogue/forget.jsonl"] = validate_dialogue_file(user[0])
        files["dialogue/retain.jsonl"] = validate_dialogue_file(user[1])
        dialogue_source = {"kind": "user", "forget": str(user[0]), "retain": str(user[1])}
    else:
        forget = [_dialogue(mcq[i]["question"], mcq[i]["choices"][mcq[i]["answer"]]) for i in train_idx]
        forget_q = {_norm(mcq[i]["question"]) for i in range(len(mcq))}
        pool, seen = [], set()
        for r in mmlu_rows["auxiliary_train"]:
            key = _norm(r["question"])
            if len(r["question"]) <= RETAIN_MAX_CHARS and key and key not in seen and key not in forget_q:
                seen.add(key)
                pool.append(r)
        if len(pool) < len(forget):
            raise DataFormatError(f"dataset '{MMLU_ID}' auxiliary_train has {len(pool)} usable questions "
                                  f"(≤ {RETAIN_MAX_CHARS} chars, distinct); need {len(forget)} retain dialogues")
        picked = random.Random(derive_seed(seed, "wmdp_retain")).sample(range(len(pool)), len(forget))
        retain = [_dialogue(pool[j]["question"], pool[j]["choices"][pool[j]["answer"]]) for j in sorted(picked)]
        files["dialogue/forget.jsonl"], files["dialogue/retain.jsonl"] = forget, retain
        dialogue_source = {"kind": "reconstruction", "retain_pool": len(pool),
                           "retain_max_chars": RETAIN_MAX_CHARS}

    jail = _jailbreak_files(bench_cfg)
    files.update(jail)
    prefill_overlap = None
    if "jailbreak/prefill.jsonl" in jail:
        prefill_overlap = _prefill_overlap(jail["jailbreak/prefill.jsonl"], mcq, train_idx)

    record = {
        "wmdp": wmdp.record(), "mmlu": mmlu.record(), "dialogue": dialogue_source,
        "split": {"seed": seed, "subset": subset, "n": len(mcq), "train": train_idx, "eval": eval_idx,
                  "note": "mcq/forget.jsonl = eval half (report this); mcq/%s.jsonl = full set, contaminated "
                          "(its train half is the forget set)" % subset},
        "prefill_overlap": prefill_overlap,
    }
    return files, record


def prepare_wmdp_dialogue(bench_cfg: dict, out_dir: str | Path) -> dict:
    """Materialise the WMDP dialogue benchmark into ``out_dir`` atomically; returns the manifest.

    ``bench_cfg``: ``seed`` (50/50 split and retain sample), ``source`` (mirror root / local copy / Hub id of
    ``cais/wmdp``), ``revision`` (of cais/wmdp); optional ``wmdp_source``, ``mmlu_source``, ``mmlu_revision``,
    ``dialogue_dir`` (user forget.jsonl/retain.jsonl), ``cache_dir``."""
    files, record = load_wmdp_dialogue(bench_cfg)
    head = {"benchmark": "wmdp_dialogue", "generator": "robust_unlearning.data.wmdp",
            "generator_version": LOADER_VERSION, "seed": int(bench_cfg.get("seed", 0) or 0), "sources": record}
    return write_benchmark(out_dir, files, head)


__all__ = ["prepare_wmdp_dialogue", "load_wmdp_dialogue", "validate_dialogue_file", "split_half",
           "HubDatasetError", "resolve_source"]
