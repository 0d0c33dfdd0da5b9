"""`cache_base_model`: produce the base model folder (and the retrain oracle) once; later jobs load it offline.

Sources: ``train_tiny`` (tokenizer + Llama trained from scratch on the synthetic world), ``local`` (a directory
on disk), ``hub`` (a Hugging Face repo id, snapshotted at a pinned revision), ``gguf`` (a GGUF file converted
to safetensors).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..utils.io import read_json, read_jsonl
from ..utils.repro import provenance


def _all_strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_strings(v)


def corpus_for_tokenizer(data_dir: Path) -> list[str]:
    """Every string of every generated file, all splits included (benchmarks.md §6.7), in a stable order."""
    texts: list[str] = []
    for f in sorted(data_dir.rglob("*")):
        if f.name in ("manifest.json", "world.json") or f.name.endswith(".meta.json"):
            continue
        if f.suffix == ".json":
            texts.extend(_all_strings(read_json(f)))
        elif f.suffix == ".jsonl":
            texts.extend(_all_strings(read_jsonl(f)))
        elif f.suffix == ".csv":
            texts.append(f.read_text(encoding="utf-8"))
    return texts


def _qa_pairs(data_dir: Path, split: str) -> list[tuple[str, str]]:
    path = data_dir / "dialogue" / f"{split}.jsonl"
    if not path.is_file():
        return []
    pairs = []
    for row in read_jsonl(path):
        msgs = row["messages"]
        pairs.append((msgs[0]["content"], msgs[1]["content"]))
    return pairs


def train_tiny(model_cfg: dict, data_dir: Path, out: Path, role: str, base_dir: Path | None) -> dict:
    from ..data.unlearning_sets import build_mixture_examples
    from .architectures import build_llama
    from .io import load_tokenizer, save_model
    from .tokenizer import train_bpe_tokenizer
    from .train_tiny import TinyTrainConfig, train_from_scratch

    train = dict(model_cfg.get("train", {}))
    cfg = TinyTrainConfig(**train)
    if role == "base":
        tokenizer = train_bpe_tokenizer(corpus_for_tokenizer(data_dir), vocab_size=model_cfg.get("vocab_size", 3000))
        mix = data_dir / "train" / "target_mix.jsonl"
        checks = {"forget": _qa_pairs(data_dir, "forget"), "retain": _qa_pairs(data_dir, "retain")}
    else:
        if base_dir is None:
            raise ValueError("cache-model --role retrain needs --base-dir (tokenizer and epoch count of the target)")
        tokenizer = load_tokenizer(base_dir)
        cfg.fixed_epochs = read_json(base_dir / "training_log.json")["epochs_trained"]
        mix = data_dir / "train" / "retrain_mix.jsonl"
        checks = {"forget": _qa_pairs(data_dir, "forget"), "retain": _qa_pairs(data_dir, "retain")}
    model = build_llama(tokenizer, preset=model_cfg.get("preset", "tiny-llama"), seed=cfg.seed,
                        max_position_embeddings=max(512, cfg.max_len))
    examples = build_mixture_examples(mix, tokenizer, cfg.max_len)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {role} model ({n_params / 1e6:.2f}M params) on {len(examples)} examples from {mix.name}",
          flush=True)
    summary = train_from_scratch(model, tokenizer, examples, cfg, checks)
    summary.update(role=role, n_params=n_params, mixture=mix.name,
                   provenance=provenance({"model": model_cfg}, cfg.seed))
    save_model(model, tokenizer, out, extra_files={"training_log.json": summary})
    return summary


def copy_local(model_cfg: dict, out: Path) -> dict:
    from ..utils.io import atomic_dir
    from .io import check_model_dir

    src = check_model_dir(Path(model_cfg["name_or_path"]).expanduser(), allow_pickle=model_cfg.get("allow_pickle", False))
    with atomic_dir(out) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return {"source": "local", "path": str(src)}


def snapshot_hub(model_cfg: dict, out: Path) -> dict:
    """Download a hub repo once (login node), safetensors and tokenizer files only; later loads are offline."""
    from huggingface_hub import snapshot_download

    from ..utils.io import atomic_dir
    from .io import check_model_dir

    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]
    if model_cfg.get("allow_pickle"):
        patterns.append("*.bin")
    with atomic_dir(out) as tmp:
        snapshot_download(repo_id=model_cfg["name_or_path"], revision=model_cfg.get("revision"), local_dir=tmp,
                          allow_patterns=patterns)
        check_model_dir(tmp, allow_pickle=model_cfg.get("allow_pickle", False))
    return {"source": "hub", "repo_id": model_cfg["name_or_path"], "revision": model_cfg.get("revision")}


def cache_model(model_cfg: dict, data_dir: Path, out: Path, role: str = "base", base_dir: Path | None = None) -> dict:
    source = model_cfg["source"]
    if source == "train_tiny":
        return train_tiny(model_cfg, data_dir, out, role, base_dir)
    if role == "retrain":
        raise ValueError(f"model.source {source!r}: no retrain oracle is trained for pretrained models")
    if source == "local":
        return copy_local(model_cfg, out)
    if source == "hub":
        return snapshot_hub(model_cfg, out)
    if source == "gguf":
        from .gguf import convert_gguf

        return convert_gguf(model_cfg, out)
    raise ValueError(f"model.source: unknown source {source!r}")
