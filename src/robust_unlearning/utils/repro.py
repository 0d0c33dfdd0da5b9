"""Seeding and provenance: what every run records next to its outputs."""
from __future__ import annotations

import hashlib
import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors", "numpy",
                     "snakemake", "robust-unlearning")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (never Python's salted ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (the rule's ``threads``); returns the value in force."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision(start: str | os.PathLike | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


#: The model folder's record of where it came from (written by models/cache.py): Hub repo id, the requested and
#: the resolved commit of the weights and of the tokenizer.
MODEL_SOURCE_FILE = "source.json"
_SOURCE_KEYS = ("dataset", "id", "config", "revision", "resolved_revision")


def input_revisions(model_dir: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The exact inputs of a run, for run.json: the base model's ``source.json`` (requested and resolved Hub
    commits of weights and tokenizer; absent for models built here) and, per dataset of the data manifest, the
    requested and resolved revision, plus the manifest's sha256 (it lists a sha256 per prepared file).

    Why: a ``revision: null`` preset resolves to whatever the Hub's main branch is on the day it runs; the
    resolved commit recorded here is what to pin to rerun it (docs/benchmarks.md, "Presets")."""
    import json

    out: dict[str, Any] = {}
    if model_dir is not None:
        src = Path(model_dir) / MODEL_SOURCE_FILE
        out["model"] = json.loads(src.read_text(encoding="utf-8")) if src.is_file() else None
    if data_dir is not None:
        manifest = Path(data_dir) / "manifest.json"
        if manifest.is_file():
            raw = manifest.read_bytes()
            sources = json.loads(raw).get("sources") or {}
            out["data"] = {"manifest_sha256": hashlib.sha256(raw).hexdigest(),
                           "sources": {name: {k: v[k] for k in _SOURCE_KEYS if k in v}
                                       for name, v in sorted(sources.items()) if isinstance(v, dict)}}
        else:
            out["data"] = None
    return out


def provenance(config: dict | None = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """The block every run.json / metrics.json carries."""
    return {"config": config, "seed": seed, "git_revision": git_revision(), "versions": library_versions(),
            "hardware": hardware(), **extra}
