"""Resumable training state at step granularity.

Layout: ``<checkpoint_dir>/state/{state.pt, meta.json}`` written through ``atomic_dir`` (temp dir + rename), so a
kill during the save leaves the previous complete state in place. ``state.pt`` holds only tensors and plain
containers and is read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_dir, atomic_write_json, read_json

STATE_DIR = "state"


class CheckpointMismatchError(ValueError):
    """A checkpoint exists for a different run configuration (would silently mix two runs)."""


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": _py_state_to_plain(random.getstate())}
    if torch.cuda.is_available():
        st["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_plain_to_py_state(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _py_state_to_plain(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _plain_to_py_state(plain):
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)


def save_state(checkpoint_dir: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    path = Path(checkpoint_dir) / STATE_DIR
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / "state.pt")
        atomic_write_json(tmp / "meta.json", meta)
    return path


def load_state(checkpoint_dir: str | Path | None, fingerprint: dict[str, Any]) -> tuple[dict, dict] | None:
    """Return (state, meta) if a complete state exists; raise if it belongs to another configuration."""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / STATE_DIR
    if not (path / "state.pt").is_file() or not (path / "meta.json").is_file():
        return None
    meta = read_json(path / "meta.json")
    old = meta.get("fingerprint", {})
    if old != fingerprint:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise CheckpointMismatchError(
            f"{path}: checkpoint belongs to a different run (differs in {diff}); remove it or use another "
            "checkpoint_dir")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return state, meta


def clear_state(checkpoint_dir: str | Path | None) -> None:
    if checkpoint_dir is not None:
        shutil.rmtree(Path(checkpoint_dir) / STATE_DIR, ignore_errors=True)
