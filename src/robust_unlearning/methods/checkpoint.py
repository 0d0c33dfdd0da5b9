"""Resumable training state at step granularity.

Layout: ``<checkpoint_dir>/state/{state.pt, meta.json}`` written through ``atomic_dir`` (temp dir + rename), so a
kill during the save leaves the previous complete state in place. ``state.pt`` holds only tensors and plain
containers and is read back with ``torch.load(weights_only=True)``. ``meta.json`` records the size and sha256 of
``state.pt`` at write time; a state that does not match them (truncated or corrupted after the save, e.g. by a
crashing file system or a copy interrupted by hand) is reported with its path, moved aside to
``state.corrupt-<time>`` and never loaded: the run starts again from step 0, which gives the same result because
a run is a pure function of its configuration.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..utils.io import DataFormatError, atomic_dir, atomic_write_json, read_json, sha256_file

STATE_DIR = "state"


class CheckpointMismatchError(ValueError):
    """A checkpoint exists for a different run configuration (would silently mix two runs)."""


class CheckpointCorruptError(ValueError):
    """A checkpoint's files do not match the size / sha256 recorded when it was written."""


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
        f = tmp / "state.pt"
        atomic_write_json(tmp / "meta.json", {**meta, "state_file": {"size": f.stat().st_size,
                                                                      "sha256": sha256_file(f)}})
    return path


def verify_state(path: str | Path) -> dict[str, Any]:
    """The meta of the state in ``path`` (``<checkpoint_dir>/state``) after checking ``state.pt`` against the
    size and sha256 recorded in ``meta.json``; raises :class:`CheckpointCorruptError` naming the file."""
    path = Path(path)
    try:
        meta = read_json(path / "meta.json")
    except DataFormatError as exc:
        raise CheckpointCorruptError(f"{path / 'meta.json'}: unreadable ({exc})") from exc
    rec = meta.get("state_file") if isinstance(meta, dict) else None
    if not isinstance(rec, dict) or "size" not in rec or "sha256" not in rec:
        raise CheckpointCorruptError(f"{path / 'meta.json'}: no recorded size/sha256 of state.pt (written by an "
                                     "older version or damaged)")
    f = path / "state.pt"
    size = f.stat().st_size
    if size != rec["size"]:
        raise CheckpointCorruptError(f"{f}: size {size} != recorded {rec['size']} (truncated?)")
    if sha256_file(f) != rec["sha256"]:
        raise CheckpointCorruptError(f"{f}: sha256 does not match meta.json (corrupted)")
    return meta


def load_state(checkpoint_dir: str | Path | None, fingerprint: dict[str, Any],
               mmap: bool = False) -> tuple[dict, dict] | None:
    """Return (state, meta) if a complete state exists; raise if it belongs to another configuration.
    ``mmap``: the tensors map the file (copy-on-write) instead of being read into memory."""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / STATE_DIR
    if not (path / "state.pt").is_file() or not (path / "meta.json").is_file():
        return None
    try:
        meta = verify_state(path)
    except CheckpointCorruptError as exc:
        aside = path.with_name(f"{STATE_DIR}.corrupt-{int(time.time())}-{os.getpid()}")
        os.replace(path, aside)
        print(f"WARNING: corrupt checkpoint ignored, training starts again from step 0: {exc} (moved to {aside})",
              file=sys.stderr, flush=True)
        return None
    old = meta.get("fingerprint", {})
    if old != fingerprint:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise CheckpointMismatchError(
            f"{path}: checkpoint belongs to a different run (differs in {diff}); remove it or use another "
            "checkpoint_dir")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True, mmap=mmap)
    return state, meta


def clear_state(checkpoint_dir: str | Path | None) -> None:
    if checkpoint_dir is not None:
        shutil.rmtree(Path(checkpoint_dir) / STATE_DIR, ignore_errors=True)
