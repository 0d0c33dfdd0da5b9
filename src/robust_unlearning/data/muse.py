"""MUSE-News / MUSE-Books → the one on-disk benchmark layout (docs/benchmarks.md, "MUSE", "On-disk format").

The Hub repos (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``) store one parquet file per config/split
(``knowmem/forget_qa-00000-of-00001.parquet``), declared in the dataset card's ``configs:`` block; older commits
also hold JSON copies. Split names changed between revisions (``retain2_qa`` → ``retain_qa``, privleak
``retain2`` → ``retain``), so each output file accepts every known spelling and the manifest records which one was
read, together with the requested and the resolved revision (pin ``benchmark.revision`` for reproducible runs).

Output (written into a temporary directory and renamed into place, so a failed download never leaves a
half-written benchmark that a later run would trust)::

    raw/{forget,retain1,retain2,holdout}.json   JSON list[str]      + .txt (documents joined by "\\n\\n")
    verbmem/forget.json                         [{"prompt", "gt"}]
    knowmem/{forget_qa,forget_qa_icl,retain_qa,retain_qa_icl}.json   [{"question", "answer"}]
    privleak/{forget,retain,holdout}.json       JSON list[str]
    manifest.json                               sources, revisions, sizes, sha256 per file
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from robust_unlearning.utils.io import (DataFormatError, atomic_dir, atomic_write_json, atomic_write_jsonl,
                                        atomic_write_text, sha256_file)

from .hub import HubDatasetError, LoadedConfig, load_config

LOADER_VERSION = 1
DATASET_IDS = {"muse_news": "muse-bench/MUSE-News", "muse_books": "muse-bench/MUSE-Books"}

# AUC_retrain (forget vs holdout, Min-40%) of MUSE's retrained models, as the MUSE reference code stores it
# (github.com/swj0419/muse_bench, constants.py: AUC_RETRAIN[corpus]["forget_holdout_Min-40%"]); PrivLeak uses it
# when the run has no retrain oracle of its own (metrics/evaluate.py, privleak_reference).
PUBLISHED_AUC_RETRAIN = {"muse_news": 0.47719999999999996, "muse_books": 0.5392999999999999}
PUBLISHED_AUC_SOURCE = "MUSE reference code (swj0419/muse_bench constants.py AUC_RETRAIN, forget_holdout_Min-40%)"


def published_auc_retrain(benchmark_name: str | None) -> float | None:
    """The published AUC_retrain of a MUSE corpus (``muse_news`` / ``muse_books``), else None."""
    return PUBLISHED_AUC_RETRAIN.get(str(benchmark_name or "").lower())


# output file -> (config, accepted split names in order of preference, fields)
RAW_SPLITS = ("forget", "retain1", "retain2", "holdout")
KNOWMEM = {
    "forget_qa": ("forget_qa",),
    "forget_qa_icl": ("forget_qa_icl",),
    "retain_qa": ("retain_qa", "retain2_qa"),
    "retain_qa_icl": ("retain_qa_icl", "retain2_qa_icl"),
}
PRIVLEAK = {"forget": ("forget",), "retain": ("retain", "retain2"), "holdout": ("holdout",)}


def _texts(cfg: LoadedConfig, split: str, rows: list[Any]) -> list[str]:
    """Rows ``{"text": str}`` (Hub) or plain strings (JSON copies) → list[str]."""
    out = []
    for i, row in enumerate(rows):
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            raise DataFormatError(f"dataset '{cfg.dataset_id}' config '{cfg.config}' split '{split}' row {i}: "
                                  f"expected a string field 'text', got {type(text).__name__}")
        out.append(text)
    return out


def _records(cfg: LoadedConfig, split: str, rows: list[Any], fields: Sequence[str]) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFormatError(f"dataset '{cfg.dataset_id}' config '{cfg.config}' split '{split}' row {i}: "
                                  f"expected an object with fields {list(fields)}, got {type(row).__name__}")
        item = {}
        for f in fields:
            if not isinstance(row.get(f), str):
                raise DataFormatError(f"dataset '{cfg.dataset_id}' config '{cfg.config}' split '{split}' row {i}: "
                                      f"field '{f}' must be a string, got {type(row.get(f)).__name__}")
            item[f] = row[f]
        out.append(item)
    return out


def _nonempty(cfg: LoadedConfig, split: str, items: list) -> list:
    if not items:
        raise DataFormatError(f"dataset '{cfg.dataset_id}' config '{cfg.config}' split '{split}' is empty")
    return items


def load_muse(name: str, bench_cfg: dict) -> tuple[dict[str, Any], dict]:
    """Read every MUSE file in memory: ({relpath: object}, sources record). Raises HubDatasetError /
    DataFormatError naming the dataset, config and split."""
    if name not in DATASET_IDS:
        raise ValueError(f"benchmark.name: {name!r} is not a MUSE benchmark ({sorted(DATASET_IDS)})")
    dataset_id = DATASET_IDS[name]
    source = bench_cfg.get("source")
    revision = bench_cfg.get("revision")
    cache_dir = bench_cfg.get("cache_dir")

    def get(config: str) -> LoadedConfig:
        return load_config(dataset_id, config, source=source, revision=revision, cache_dir=cache_dir)

    files: dict[str, Any] = {}
    record: dict[str, Any] = {"dataset": dataset_id, "configs": {}, "split_map": {}}

    raw = get("raw")
    for split in RAW_SPLITS:
        got, rows = raw.pick((split,))
        docs = _texts(raw, got, rows)
        if split == "forget":
            _nonempty(raw, got, docs)
        files[f"raw/{split}.json"] = docs
        files[f"raw/{split}.txt"] = "\n\n".join(docs)
        record["split_map"][f"raw/{split}.json"] = f"raw/{got}"

    verb = get("verbmem")
    got, rows = verb.pick(("forget",))
    files["verbmem/forget.json"] = _nonempty(verb, got, _records(verb, got, rows, ("prompt", "gt")))
    record["split_map"]["verbmem/forget.json"] = f"verbmem/{got}"

    know = get("knowmem")
    for out, names in KNOWMEM.items():
        got, rows = know.pick(names)
        files[f"knowmem/{out}.json"] = _nonempty(know, got, _records(know, got, rows, ("question", "answer")))
        record["split_map"][f"knowmem/{out}.json"] = f"knowmem/{got}"

    priv = get("privleak")
    for out, names in PRIVLEAK.items():
        got, rows = priv.pick(names)
        files[f"privleak/{out}.json"] = _nonempty(priv, got, _texts(priv, got, rows))
        record["split_map"][f"privleak/{out}.json"] = f"privleak/{got}"

    for cfg in (raw, verb, know, priv):
        record["configs"][cfg.config] = cfg.record()
    resolved = {c.resolved_revision for c in (raw, verb, know, priv)} - {None}
    record.update(source=raw.source, revision=revision,
                  resolved_revision=resolved.pop() if len(resolved) == 1 else None)
    return files, record


def write_benchmark(out_dir: str | Path, files: dict[str, Any], manifest_head: dict) -> dict:
    """Write ``files`` ({relpath: list|dict|str}) + manifest.json into ``out_dir`` atomically; return the
    manifest (sha256, bytes and rows per file, as the synthetic generator writes them)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        entries = {}
        for rel in sorted(files):
            obj = files[rel]
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(obj, str):  # .txt, .csv, or a file copied verbatim
                atomic_write_text(path, obj)
            elif rel.endswith(".jsonl"):
                atomic_write_jsonl(path, obj)
            else:
                atomic_write_json(path, obj)
            rows = len(obj) if isinstance(obj, (list, dict)) else None
            if rel.endswith(".jsonl") and isinstance(obj, str):
                rows = sum(1 for line in obj.splitlines() if line.strip())
            entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "rows": rows}
        manifest = dict(manifest_head)
        manifest["sizes"] = {rel: e["rows"] for rel, e in entries.items() if e["rows"] is not None}
        manifest["files"] = entries
        manifest.setdefault("tokenizer", None)
        manifest.setdefault("models", {})
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def prepare_muse(name: str, bench_cfg: dict, out_dir: str | Path) -> dict:
    """Materialise MUSE-News or MUSE-Books into ``out_dir`` (docs/benchmarks.md, "On-disk format"); returns the manifest.

    ``bench_cfg``: ``source`` (Hub id, local copy of the repo, or mirror root; default the muse-bench id),
    ``revision`` (Hub commit/tag; recorded), optional ``cache_dir`` (datasets cache)."""
    files, record = load_muse(name, bench_cfg)
    head = {"benchmark": name, "generator": "robust_unlearning.data.muse", "generator_version": LOADER_VERSION,
            "sources": {"muse": record}}
    return write_benchmark(out_dir, files, head)


__all__ = ["prepare_muse", "load_muse", "write_benchmark", "HubDatasetError", "DATASET_IDS", "PUBLISHED_AUC_RETRAIN",
           "published_auc_retrain"]
