"""`cache_base_model`: produce the base model folder (and the retrain oracle) once; later jobs load it offline.

Sources: ``train_tiny`` (tokenizer + Llama trained from scratch on the synthetic world), ``local`` (a directory
on disk), ``hub`` (a Hugging Face repo id, snapshotted at a pinned revision), ``gguf`` (a GGUF file converted
to safetensors).

With ``model.finetune`` (hub / local / gguf on the synthetic world) a pretrained model becomes a TOFU-style
target: role ``pretrained`` fetches/converts the model once (``models/pretrained``), role ``base`` fine-tunes a
copy on ``train/target_mix.jsonl`` and role ``retrain`` runs the same recipe, from the same pretrained weights,
on ``train/retrain_mix.jsonl`` (the oracle). Dialogues go through the model's own chat template.
"""
from __future__ import annotations

import os
import re
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
    """Every string of every generated file, all splits included, in a stable order (docs/benchmarks.md,
    "Tokenizer")."""
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
        convert_pickle_weights(model_cfg, tmp)
        record = {"source": "local", "path": str(src), "tokenizer": finish_tokenizer(model_cfg, tmp)}
        write_source(tmp, record)
    return record


_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_cache_commit(repo_id: str, revision: str | None, filename: str = "config.json",
                     cache_dir: str | os.PathLike | None = None) -> str | None:
    """The commit that ``revision`` (a branch, tag or commit; None = main) of a Hub repo resolves to in the
    Hugging Face cache: the ``snapshots/<commit>/`` folder that holds ``filename`` (refs/<branch> names the
    commit). None when the repo or the file is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or "main")
    except (ValueError, OSError):   # not a repo id (a local path)
        return None
    if not isinstance(hit, str):
        return None
    commit = Path(hit).parent.name
    return commit if _COMMIT.fullmatch(commit) else None


def local_dir_commit(local_dir: Path) -> str | None:
    """The commit ``snapshot_download(local_dir=...)`` fetched: huggingface_hub writes one
    ``.cache/huggingface/download/<file>.metadata`` per file whose first line is the commit hash. None unless
    every file names the same commit."""
    meta = Path(local_dir) / ".cache" / "huggingface" / "download"
    commits = set()
    for f in meta.rglob("*.metadata") if meta.is_dir() else ():
        first = f.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip()
        if _COMMIT.fullmatch(first):
            commits.add(first)
    return commits.pop() if len(commits) == 1 else None


def resolved_hub_commit(repo_id: str, revision: str | None, local_dir: Path | None = None,
                        filename: str = "config.json") -> str | None:
    """The Hub commit a download of ``repo_id`` at ``revision`` got: from the files fetched into ``local_dir``,
    else from the HF cache, else ``revision`` itself when it is a full commit hash."""
    commit = (local_dir_commit(local_dir) if local_dir is not None else None) or \
        hub_cache_commit(repo_id, revision, filename)
    if commit is None and revision and _COMMIT.fullmatch(revision):
        commit = revision
    return commit


def write_source(model_dir: Path, record: dict) -> dict:
    """The model folder's record of where it came from (``source.json``; run.json copies it, utils.repro)."""
    from ..utils.io import atomic_write_json
    from ..utils.repro import MODEL_SOURCE_FILE

    atomic_write_json(Path(model_dir) / MODEL_SOURCE_FILE, record)
    return record


def snapshot_hub(model_cfg: dict, out: Path) -> dict:
    """Download a hub repo once (login node), safetensors and tokenizer files only; later loads are offline."""
    from huggingface_hub import constants, snapshot_download

    from ..utils.io import atomic_dir
    from .io import check_model_dir

    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]
    if model_cfg.get("allow_pickle"):
        patterns.append("*.bin")
    with atomic_dir(out) as tmp:
        if constants.HF_HUB_OFFLINE:
            # offline, snapshot_download(local_dir=<empty folder>) refuses even when the repo is in the HF cache
            # (fetched beforehand, e.g. `hf download` on a login node): take the cached snapshot and copy it
            snap = Path(snapshot_download(repo_id=model_cfg["name_or_path"], revision=model_cfg.get("revision"),
                                          allow_patterns=patterns))
            for f in sorted(snap.rglob("*")):
                rel = f.relative_to(snap)
                if f.is_file() and any(rel.match(p) for p in patterns):
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, tmp / rel)    # follows the cache's symlinks into blobs/
        else:
            snapshot_download(repo_id=model_cfg["name_or_path"], revision=model_cfg.get("revision"), local_dir=tmp,
                              allow_patterns=patterns)
        check_model_dir(tmp, allow_pickle=model_cfg.get("allow_pickle", False))
        convert_pickle_weights(model_cfg, tmp)
        repo, revision = model_cfg["name_or_path"], model_cfg.get("revision")
        commit = resolved_hub_commit(repo, revision, tmp)
        record = {"source": "hub", "repo_id": repo, "revision": revision, "resolved_revision": commit,
                  "tokenizer": finish_tokenizer(model_cfg, tmp, model_commit=commit)}
        if commit is None:
            print(f"warning: could not tell which commit of {repo} was downloaded (revision {revision or 'main'}); "
                  "pin model.revision to a commit hash", flush=True)
        write_source(tmp, record)
    return record


def convert_pickle_weights(model_cfg: dict, model_dir: Path) -> None:
    """``allow_pickle: true``: read pickle-only weights once, here (transformers unpickles with
    ``weights_only=True``), and rewrite them as safetensors, so that every later job loads safetensors and keeps
    refusing pickles. A folder that already has safetensors is left alone (its pickles are never read)."""
    from .io import WEIGHTS_MANIFEST, load_model

    pickles = sorted(p for pat in ("*.bin", "*.pt", "*.pth") for p in model_dir.glob(pat))
    if not pickles or list(model_dir.glob("*.safetensors")):
        return
    model = load_model(model_dir, dtype=model_cfg.get("dtype", "float32"), allow_pickle=True,
                       trust_remote_code=model_cfg.get("trust_remote_code", False))
    model.save_pretrained(model_dir, safe_serialization=True)
    for p in pickles + list(model_dir.glob("*.bin.index.json")):
        p.unlink()
    (model_dir / WEIGHTS_MANIFEST).unlink(missing_ok=True)   # it listed the pickles
    print(f"allow_pickle: converted {', '.join(p.name for p in pickles)} to safetensors", flush=True)


def finish_tokenizer(model_cfg: dict, model_dir: Path, model_commit: str | None = None) -> dict:
    """Put the configured tokenizer (``model.tokenizer`` at ``model.tokenizer_revision``) into the model folder and
    give it a pad token (``model.pad_token``), so that every later job loads one self-contained folder offline.
    Returns where the tokenizer came from: its id, the requested and the resolved commit (a tokenizer taken from
    the model folder itself is the model's commit, ``model_commit``)."""
    from transformers import AutoTokenizer

    named = model_cfg.get("tokenizer")
    source = named or str(model_dir)
    revision = model_cfg.get("tokenizer_revision") if named else None
    kwargs = {"revision": revision} if revision else {}
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.get("trust_remote_code", False), **kwargs)
    if tok.pad_token_id is None:
        choice = model_cfg.get("pad_token")
        if choice is None:
            raise ValueError(f"model.pad_token: the tokenizer of {source} has no pad token; set model.pad_token "
                             "to 'eos' (as the MUSE reference does) or 'unk'")
        tok.pad_token = tok.eos_token if choice == "eos" else tok.unk_token
    tok.save_pretrained(model_dir)
    if not named:
        return {"id": None, "revision": None, "resolved_revision": model_commit}   # the model folder's own
    local = Path(str(named)).expanduser().is_dir()
    return {"id": named, "revision": revision,
            "resolved_revision": None if local else resolved_hub_commit(named, revision, None, "tokenizer_config.json")}


def finetune_settings(model_cfg: dict) -> dict | None:
    """The ``model.finetune`` section when it is present and enabled, else None."""
    ft = model_cfg.get("finetune")
    if not ft or not ft.get("enabled", True):
        return None
    return ft


def fetch_pretrained(model_cfg: dict, out: Path) -> dict:
    source = model_cfg["source"]
    if source == "local":
        return copy_local(model_cfg, out)
    if source == "hub":
        return snapshot_hub(model_cfg, out)
    if source == "gguf":
        from .gguf import convert_gguf

        return convert_gguf(model_cfg, out)
    raise ValueError(f"model.source: unknown source {source!r}")


def pack_examples(examples: list[dict], max_len: int, eos_id: int | None) -> list[dict]:
    """Concatenate consecutive examples (EOS after each that does not end with one) into rows of at most
    ``max_len`` tokens, labels kept: the mixture's documents, QA lines and dialogues differ a lot in length, so
    random batches are mostly padding; packed rows train on the same tokens in about a third of the compute."""
    packed: list[dict] = []
    ids_acc: list[int] = []
    lab_acc: list[int] = []
    for e in examples:
        ids, labels = list(e["input_ids"]), list(e.get("labels", e["input_ids"]))
        if eos_id is not None and eos_id not in ids[-2:]:
            ids.append(eos_id)
            labels.append(eos_id)
        ids, labels = ids[:max_len], labels[:max_len]
        if ids_acc and len(ids_acc) + len(ids) > max_len:
            packed.append({"input_ids": ids_acc, "labels": lab_acc})
            ids_acc, lab_acc = [], []
        ids_acc = ids_acc + ids
        lab_acc = lab_acc + labels
    if ids_acc:
        packed.append({"input_ids": ids_acc, "labels": lab_acc})
    return packed


def finetune_pretrained(model_cfg: dict, data_dir: Path, out: Path, role: str, pretrained_dir: Path | None) -> dict:
    """Fine-tune the pretrained model on the target mixture (role base) or the retain-only mixture (retrain).

    The same recipe (``model.finetune``) from the same pretrained weights for both roles, through the shared
    training loop (``methods.finetune``: seeded order, AdamW, clipping, resumable on SIGTERM). With ``epochs``
    the step count follows each mixture's size, as the from-scratch oracle trains as many epochs as the target.
    """
    import math
    import time

    from ..data.unlearning_sets import build_mixture_examples
    from ..methods import finetune
    from ..utils.repro import seed_everything
    from .io import load_model, load_tokenizer, save_model
    from .train_tiny import greedy_exact_match

    ft = finetune_settings(model_cfg)
    if pretrained_dir is None:  # the results layout: models/{pretrained,base,retrain} are siblings
        pretrained_dir = out.parent / "pretrained"
    if not pretrained_dir.is_dir():
        raise FileNotFoundError(f"{pretrained_dir}: pretrained model not found; cache-model --role {role} with "
                                "model.finetune fine-tunes the folder written by `ru cache-model --role pretrained` "
                                "(pass --pretrained-dir, default: the sibling folder 'pretrained' of --out)")
    mix = data_dir / "train" / ("target_mix.jsonl" if role == "base" else "retrain_mix.jsonl")
    if not mix.is_file():
        raise FileNotFoundError(f"{mix}: model.finetune needs the synthetic world's training mixtures "
                                "(benchmark.name: synthetic)")
    allow_pickle = model_cfg.get("allow_pickle", False)
    trust = model_cfg.get("trust_remote_code", False)
    model = load_model(pretrained_dir, dtype=model_cfg.get("dtype", "float32"), allow_pickle=allow_pickle,
                       trust_remote_code=trust)
    tokenizer = load_tokenizer(pretrained_dir, trust_remote_code=trust)
    max_len = int(ft.get("max_len", 256))
    examples = build_mixture_examples(mix, tokenizer, max_len)
    n_rows = len(examples)
    if ft.get("pack", False):
        examples = pack_examples(examples, max_len, tokenizer.eos_token_id)
    bs, accum = int(ft.get("batch_size", 8)), int(ft.get("grad_accum", 1))
    steps = ft.get("steps") or int(ft.get("epochs", 1)) * max(1, math.ceil(len(examples) / (bs * accum)))
    seed = int(ft.get("seed", 0))
    n_tokens = sum(len(e["input_ids"]) for e in examples)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"fine-tuning the pretrained model ({n_params / 1e6:.1f}M params) as the {role} model on {n_rows} rows of "
          f"{mix.name} ({len(examples)} {'packed ' if ft.get('pack') else ''}examples, {n_tokens} tokens): "
          f"{steps} steps, batch {bs}x{accum}, lr {ft.get('lr')}", flush=True)
    checks = {"forget": _qa_pairs(data_dir, "forget"), "retain": _qa_pairs(data_dir, "retain")}
    before = {k: greedy_exact_match(model, tokenizer, v, batch_size=16) for k, v in checks.items()}
    ckpt = out.parent.parent / "checkpoints" / "models" / out.name if out.parent.name == "models" else None
    seed_everything(seed)
    t0 = time.perf_counter()
    stats = finetune(model, tokenizer, examples, steps=steps, lr=float(ft.get("lr", 1e-4)), batch_size=bs, seed=seed,
                     schedule=ft.get("schedule", "cosine"), checkpoint_dir=ckpt,
                     train_cfg={"grad_accum": accum, "max_len": max_len, "progress": True,
                                "warmup_steps": int(ft.get("warmup_steps", 0)),
                                "weight_decay": float(ft.get("weight_decay", 0.0))})
    seconds = time.perf_counter() - t0
    if stats["status"] != "ok":
        raise FloatingPointError(f"fine-tuning the {role} model diverged: {stats.get('divergence')}")
    model.eval()
    after = {k: greedy_exact_match(model, tokenizer, v, batch_size=16) for k, v in checks.items()}
    print(f"{role}: final loss {stats['final_loss']:.4f}; QA exact match {before} -> {after} ({seconds:.0f}s)",
          flush=True)
    summary = {"role": role, "source": model_cfg["source"], "finetune": dict(ft), "mixture": mix.name,
               "n_rows": n_rows, "n_examples": len(examples), "n_tokens": n_tokens, "n_params": n_params,
               "steps": stats["steps"], "final_loss": stats["final_loss"], "losses": stats["losses"], "cost": stats["cost"],
               "train_seconds": seconds, "qa_exact_match_before": before, "final_qa_exact_match": after,
               "pretrained_dir": str(pretrained_dir), "provenance": provenance({"model": model_cfg}, seed)}
    save_model(model, tokenizer, out, extra_files={"training_log.json": summary})
    return summary


def cache_model(model_cfg: dict, data_dir: Path, out: Path, role: str = "base", base_dir: Path | None = None,
                pretrained_dir: Path | None = None) -> dict:
    source = model_cfg["source"]
    if source == "train_tiny":
        if role == "pretrained":
            raise ValueError("model.source 'train_tiny': there is no pretrained model (trained from scratch)")
        return train_tiny(model_cfg, data_dir, out, role, base_dir)
    if role == "pretrained":
        return fetch_pretrained(model_cfg, out)
    if finetune_settings(model_cfg) is not None:
        return finetune_pretrained(model_cfg, data_dir, out, role, pretrained_dir)
    if role == "retrain":
        raise ValueError(f"model.source {source!r}: no retrain oracle is trained for pretrained models "
                         "(set model.finetune to fine-tune a target and an oracle on the synthetic world)")
    return fetch_pretrained(model_cfg, out)
