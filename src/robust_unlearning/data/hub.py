"""Fetch the splits of a Hugging Face dataset, from the Hub or from a local copy laid out like the Hub repo.

Why a wrapper around ``datasets.load_dataset``:
- one clear error for every way a real benchmark can be unavailable (gated, missing, offline, wrong revision),
  naming the dataset id and the three ways out (licence + ``HF_TOKEN``, pre-download, local directory);
- split names differ between revisions of the same dataset (MUSE: ``retain_qa`` vs ``retain2_qa``), so callers
  ask for a list of acceptable spellings;
- the exact revision that was read (the Hub commit, or a content hash of a local copy) goes into the manifest.

A ``source`` is either a Hub id (``muse-bench/MUSE-News``), a local copy of that repo (a directory with the Hub's
``README.md`` ``configs:`` block and ``<config>/<split>-00000-of-00001.parquet`` files, or plain
``<config>/<split>.json|jsonl|parquet`` files), or a *mirror root* that holds copies under their ids
(``<root>/muse-bench/MUSE-News``, ``<root>/cais/wmdp``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from robust_unlearning.utils.io import DataFormatError


class HubDatasetError(RuntimeError):
    """A dataset could not be loaded; the message names the dataset id and what to do."""


_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}$")
_DATA_EXT = (".parquet", ".jsonl", ".json")


def remedy(dataset_id: str) -> str:
    return (f"If '{dataset_id}' is gated, accept its licence at https://huggingface.co/datasets/{dataset_id} and "
            f"export HF_TOKEN=<token> (or run `hf auth login`); if this machine is offline (HF_HUB_OFFLINE=1), "
            f"download it once elsewhere into the Hugging Face cache, or copy the repository (same file layout) "
            f"to a local directory and set benchmark.source to that directory (or to a mirror root that holds it "
            f"as <root>/{dataset_id}).")


def resolve_source(source: str | os.PathLike | None, dataset_id: str) -> tuple[str, bool]:
    """Return (path or hub id, is_local) for ``dataset_id`` given the configured ``source``.

    ``None`` → the Hub id; a directory that contains ``<dataset_id>`` → that mirror copy; any other directory →
    itself (a copy of the repo); a string that is not a directory → a Hub id."""
    if source is None or str(source).strip() == "":
        return dataset_id, False
    path = Path(str(source)).expanduser()
    if path.is_dir():
        mirror = path / dataset_id
        if mirror.is_dir():
            return str(mirror), True
        return str(path), True
    if str(source).startswith((".", "/", "~")) or os.sep in str(source).strip("/").replace("/", "", 1):
        raise HubDatasetError(f"dataset source {str(source)!r} is neither an existing directory nor a Hub id "
                              f"(owner/name). {remedy(dataset_id)}")
    return str(source), False


# --------------------------------------------------------------------------------------------- local copies

def _readme_configs(root: Path) -> dict[str, list[dict]]:
    """The ``configs:`` block of a Hub dataset card (``README.md`` YAML front matter), by config name."""
    readme = root / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    import yaml

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    for cfg in meta.get("configs") or []:
        if isinstance(cfg, dict) and "config_name" in cfg:
            files = cfg.get("data_files") or []
            out[str(cfg["config_name"])] = files if isinstance(files, list) else [files]
    return out


def _split_name(path: Path) -> str:
    stem = path.name
    for ext in _DATA_EXT:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return _SHARD_RE.sub("", stem).replace("-", "_")


def _discover(root: Path, config: str) -> dict[str, list[Path]]:
    """Files of ``<root>/<config>/`` grouped by split (``forget_qa-00000-of-00001.parquet`` → ``forget_qa``,
    ``forget-qa.json`` → ``forget_qa``). Parquet shards win over JSON copies of the same split."""
    folder = root / config
    if not folder.is_dir():
        return {}
    by_split: dict[str, dict[str, list[Path]]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(_DATA_EXT):
            ext = ".parquet" if p.name.endswith(".parquet") else ".json"
            by_split.setdefault(_split_name(p), {}).setdefault(ext, []).append(p)
    return {s: (exts.get(".parquet") or exts[".json"]) for s, exts in by_split.items()}


def _read_json_rows(path: Path) -> list[Any]:
    """Rows of a ``.jsonl`` file (one per line) or a ``.json`` file (a list, ``{"data": [...]}``, column-oriented
    ``{"col": [...]}``, or JSON lines saved under a ``.json`` name)."""
    text = path.read_text(encoding="utf-8")
    data: Any = None
    if not path.name.endswith(".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if isinstance(data.get("data"), list):
            return data["data"]
        cols = {k: v for k, v in data.items() if isinstance(v, list)}
        if cols and len(cols) == len(data) and len({len(v) for v in cols.values()}) == 1:
            n = len(next(iter(cols.values())))
            return [{k: v[i] for k, v in cols.items()} for i in range(n)]
        return [data]
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}: malformed JSON on line {lineno}: {exc.msg}") from exc
    return rows


def _read_files(paths: Sequence[Path]) -> list[Any]:
    rows: list[Any] = []
    for p in paths:
        if p.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            rows += pq.read_table(p).to_pylist()
        else:
            rows += _read_json_rows(p)
    return rows


def _fingerprint(paths: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- loading

class LoadedConfig:
    """The splits of one dataset config as plain Python rows, plus where they came from."""

    def __init__(self, dataset_id: str, source: str, config: str, splits: dict[str, list[Any]],
                 revision: str | None, resolved_revision: str | None, loader: str):
        self.dataset_id, self.source, self.config = dataset_id, source, config
        self.splits = splits
        self.revision, self.resolved_revision, self.loader = revision, resolved_revision, loader

    def pick(self, candidates: Sequence[str], required: bool = True) -> tuple[str | None, list[Any]]:
        """The first split whose name is in ``candidates`` (revision-dependent spellings)."""
        for name in candidates:
            if name in self.splits:
                return name, self.splits[name]
        if required:
            raise HubDatasetError(
                f"dataset '{self.dataset_id}' (source {self.source}, config '{self.config}', revision "
                f"{self.revision or 'default'}) has no split named {' or '.join(map(repr, candidates))}; "
                f"available: {sorted(self.splits)}")
        return None, []

    def record(self) -> dict:
        return {"id": self.dataset_id, "source": self.source, "config": self.config, "revision": self.revision,
                "resolved_revision": self.resolved_revision, "loader": self.loader,
                "splits": {k: len(v) for k, v in sorted(self.splits.items())}}


def _unwrap(row: Any) -> Any:
    """cais/mmlu's ``auxiliary_train`` config nests each row under a single ``train`` column."""
    if isinstance(row, dict) and set(row) == {"train"} and isinstance(row["train"], dict):
        return row["train"]
    return row


def load_config(dataset_id: str, config: str, source: str | os.PathLike | None = None,
                revision: str | None = None, splits: Sequence[str] | None = None,
                cache_dir: str | None = None) -> LoadedConfig:
    """Load every split of ``config`` (or only ``splits``) of ``dataset_id``; raise :class:`HubDatasetError`
    naming the dataset and the remedies when it is unavailable."""
    where, local = resolve_source(source, dataset_id)
    root = Path(where)
    if local:
        declared = _readme_configs(root)
        if config not in declared:
            found = _discover(root, config)
            if splits is not None:
                found = {k: v for k, v in found.items() if k in splits}
            if not found:
                raise HubDatasetError(
                    f"local copy {root} of dataset '{dataset_id}' has no config '{config}': neither a README.md "
                    f"`configs:` entry nor data files under {root / config}/ (<split>.json|jsonl|parquet). "
                    f"{remedy(dataset_id)}")
            rows = {}
            for split, paths in found.items():
                try:
                    rows[split] = [_unwrap(r) for r in _read_files(paths)]
                except (OSError, ValueError) as exc:
                    raise HubDatasetError(f"dataset '{dataset_id}' config '{config}' split '{split}': cannot read "
                                          f"{', '.join(map(str, paths))}: {exc}") from exc
            fp = _fingerprint([p for ps in found.values() for p in ps], root)
            return LoadedConfig(dataset_id, str(root), config, rows, revision, f"local-sha256:{fp}", "files")
    return _load_with_datasets(dataset_id, where, config, revision, splits, cache_dir, local)


def _load_with_datasets(dataset_id: str, where: str, config: str, revision: str | None,
                        splits: Sequence[str] | None, cache_dir: str | None, local: bool) -> LoadedConfig:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a declared dependency
        raise HubDatasetError(f"the 'datasets' package is needed to load '{dataset_id}': {exc}") from exc
    kwargs: dict[str, Any] = {}
    if revision:
        kwargs["revision"] = revision
    if cache_dir:
        kwargs["cache_dir"] = str(cache_dir)
    resolved = None
    try:
        ds = datasets.load_dataset(where, config, **kwargs)
    except Exception as exc:  # every failure mode of the Hub ends here: wrap it with what to do
        shown = dataset_id if local or where == dataset_id else where   # the id actually requested
        kind = type(exc).__name__
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause).strip():
            text += f" (caused by {type(cause).__name__}: {str(cause).strip().splitlines()[0]})"
        gated = "gated" in str(exc).lower() or kind == "GatedRepoError"
        what = "is gated (licence not accepted or no HF_TOKEN)" if gated else "could not be loaded"
        raise HubDatasetError(
            f"dataset '{shown}' (config '{config}', revision {revision or 'default'}, from "
            f"{'local copy ' + where if local else 'the Hugging Face Hub'}) {what}: {kind}: {text}. "
            f"{remedy(shown)}") from exc
    if not isinstance(ds, dict):  # a single Dataset (should not happen without split=)
        ds = {"train": ds}
    rows = {}
    for name, part in ds.items():
        if splits is not None and name not in splits:
            continue
        rows[str(name)] = [_unwrap(r) for r in part.to_list()]
        if resolved is None:
            resolved = _revision_from_cache(part)
    return LoadedConfig(dataset_id, where, config, rows, revision, resolved, "datasets.load_dataset")


def _revision_from_cache(part: Any) -> str | None:
    """The Hub commit (or local content hash) that ``datasets`` stored the arrow cache under:
    ``<cache>/<owner>___<name>/<config>/<version>/<hash>/...``."""
    try:
        fname = part.cache_files[0]["filename"]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    parent = Path(fname).parent.name
    return parent if re.fullmatch(r"[0-9a-f]{16,64}", parent) else None
