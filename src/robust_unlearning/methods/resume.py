"""Checkpoint/resume of a :class:`~.loop.Trainer` at step granularity (the on-disk format is in :mod:`.checkpoint`).

The state holds the trainable parameters, AdamW and scheduler states, the RNG states, the step counter, the log
rows and the pass counters; with the data order a pure function of (seed, step) (:mod:`.batching`), a resumed CPU
run is bit-identical to an uninterrupted one. A checkpoint whose fingerprint (method, params, train settings,
seed, data hashes) differs from the run's is refused, never mixed in. The fingerprint also names the job's input
files (:func:`input_fingerprint`: the model it starts from, PRISM's probe): a checkpoint that differs from the run
in those alone was made from an input that has since been rebuilt, so it is deleted with a warning and training
starts again from step 0 (the rebuilt input makes Snakemake rerun the job at the same path, the same
checkpoint_dir).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint as ckpt

if TYPE_CHECKING:
    from .loop import Trainer


def jsonable(obj):
    """``obj`` as it reads back from JSON (tuples become lists, odd types strings): fingerprints compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


#: fingerprint keys that name the job's input files (see input_fingerprint)
INPUT_KEYS = ("model_sha256", "probe_sha256")


def _weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "weights:" + h.hexdigest()


def dir_sha256(path) -> str | None:
    """One sha256 over the names and contents of every file under ``path`` (None: no such folder)."""
    from ..utils.io import sha256_file

    path = Path(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def input_fingerprint(model, probe_dir=None) -> dict[str, Any]:
    """The identity of a training job's inputs: ``model_sha256`` of the model it starts from (the sha256 of the
    weights_manifest.json that models.io.save_model wrote next to the weights, which lists every file's sha256;
    a model not loaded from such a folder is hashed from its weights in memory) and ``probe_sha256`` of the
    probe folder (None without one). Computed before any training, from the model as it was loaded."""
    from ..models.io import WEIGHTS_MANIFEST
    from ..utils.io import sha256_file

    src = str(getattr(model, "name_or_path", "") or "")
    manifest = Path(src) / WEIGHTS_MANIFEST if src else None
    if manifest is not None and manifest.is_file():
        model_hash = "manifest:" + sha256_file(manifest)
    else:
        model_hash = _weights_sha256(model)
    return {"model_sha256": model_hash, "probe_sha256": dir_sha256(probe_dir) if probe_dir is not None else None}


def discard_stale_checkpoint(t: "Trainer") -> bool:
    """Delete ``t``'s checkpoint when it differs from the run only in :data:`INPUT_KEYS` (made from a base model
    or probe that has since been rebuilt); True if it did. Any other difference is left to ``load_state``,
    which refuses it."""
    if t.checkpoint_dir is None:
        return False
    path = Path(t.checkpoint_dir) / ckpt.STATE_DIR
    try:
        old = json.loads((path / "meta.json").read_text()).get("fingerprint", {})
    except (OSError, ValueError):  # absent, or unreadable: load_state's integrity check reports it
        return False
    new = jsonable(t.fingerprint)
    diff = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    if not diff or not diff <= set(INPUT_KEYS):
        return False
    shutil.rmtree(path)
    print(f"WARNING: {path}: checkpoint made from other inputs ({', '.join(sorted(diff))} changed: the model or "
          "probe was rebuilt); deleted, training starts again from step 0", file=sys.stderr, flush=True)
    return True


def trainer_state(t: "Trainer", steps_done: int) -> dict[str, Any]:
    return {"trainable": {n: p.detach().to("cpu", copy=True) for n, p in t.named_params},
            "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            "rng": ckpt.rng_state(), "step": steps_done, "rows": json.dumps(t.rows),
            "counters": json.dumps(t.counters)}


def save_trainer(t: "Trainer", steps_done: int) -> None:
    if t.checkpoint_dir is None:
        return
    ckpt.save_state(t.checkpoint_dir, trainer_state(t, steps_done),
                    {"fingerprint": t.fingerprint, "step": steps_done, "total_steps": t.total_steps,
                     "saved_at": time.time()})


def resume_trainer(t: "Trainer") -> None:
    """Restore ``t`` from its checkpoint dir if a matching state exists (sets ``t.start_step``)."""
    discard_stale_checkpoint(t)
    loaded = ckpt.load_state(t.checkpoint_dir, jsonable(t.fingerprint))
    if loaded is None:
        return
    state, _meta = loaded
    names = {n for n, _ in t.named_params}
    if set(state["trainable"]) != names:
        raise ckpt.CheckpointMismatchError(f"{t.checkpoint_dir}: trainable parameter names differ")
    with torch.no_grad():
        for n, p in t.named_params:
            p.copy_(state["trainable"][n])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    t.start_step = int(state["step"])
    t.rows = json.loads(state["rows"])
    t.counters.update(json.loads(state["counters"]))
    print(f"{t.method.name}: resumed from step {t.start_step} of {t.total_steps} "
          f"(checkpoint {t.checkpoint_dir})", file=sys.stderr, flush=True)
