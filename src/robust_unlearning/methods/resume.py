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
    """The resumable state. With several processes (docs/methods.md, "Several processes") every process calls
    it (gathering FSDP shards and summing the pass counters are collectives) and process 0's is the one saved:
    whole tensors in the one-process layout, so a checkpoint resumes with any number of processes."""
    g = getattr(t, "group", None)
    if g is None:
        return {"trainable": {n: p.detach().to("cpu", copy=True) for n, p in t.named_params},
                "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                "rng": ckpt.rng_state(), "step": steps_done, "rows": json.dumps(t.rows),
                "counters": json.dumps(t.counters)}
    from . import distributed

    keep = g.is_main
    trainable = {}
    for n, p in t.named_params:
        whole = distributed.full_tensor(p.detach()) if t.sharded else p.detach()
        if keep:
            trainable[n] = whole.to("cpu", copy=True)
    optimizer = t.optimizer.state_dict()
    if t.sharded:   # AdamW's moments are sharded like the parameters: whole tensors, in the same order everywhere
        whole_state = {}
        for i in sorted(optimizer["state"]):
            entry = {}
            for k in sorted(optimizer["state"][i]):
                v = optimizer["state"][i][k]
                w = distributed.full_tensor(v) if torch.is_tensor(v) else v
                if keep:
                    entry[k] = w.to("cpu", copy=True) if torch.is_tensor(w) else w
                del w   # the other processes only take part in the gather
            whole_state[i] = entry
        optimizer = {"state": whole_state, "param_groups": optimizer["param_groups"]}
    counters = g.sum_counts(t.counters)
    return {"trainable": trainable, "optimizer": optimizer, "scheduler": t.scheduler.state_dict(),
            "rng": ckpt.rng_state(), "step": steps_done, "rows": json.dumps(t.rows), "counters": json.dumps(counters)}


def save_trainer(t: "Trainer", steps_done: int) -> None:
    if t.checkpoint_dir is None:
        return
    state = trainer_state(t, steps_done)
    g = getattr(t, "group", None)
    if g is None or g.is_main:
        ckpt.save_state(t.checkpoint_dir, state, {"fingerprint": t.fingerprint, "step": steps_done,
                                                  "total_steps": t.total_steps, "saved_at": time.time()})
    if g is not None:   # no process leaves (e.g. Preempted) while process 0 is still writing
        g.barrier()


def resume_trainer(t: "Trainer") -> None:
    """Restore ``t`` from its checkpoint dir if a matching state exists (sets ``t.start_step``).

    With several processes, process 0 first settles what is there (deletes a stale state, moves a corrupt one
    aside, refuses a foreign one); then every process reads the same state (memory-mapped, so a machine's
    processes share one copy of the file in memory)."""
    g = getattr(t, "group", None)
    loaded = None
    if g is None or g.is_main:
        discard_stale_checkpoint(t)
        loaded = ckpt.load_state(t.checkpoint_dir, jsonable(t.fingerprint), mmap=g is not None)
    if g is not None:
        g.barrier()
        if not g.is_main:
            loaded = ckpt.load_state(t.checkpoint_dir, jsonable(t.fingerprint), mmap=True)
    if loaded is None:
        return
    state, _meta = loaded
    names = {n for n, _ in t.named_params}
    if set(state["trainable"]) != names:
        raise ckpt.CheckpointMismatchError(f"{t.checkpoint_dir}: trainable parameter names differ")
    sharded = getattr(t, "sharded", False)
    from . import distributed

    with torch.no_grad():
        for n, p in t.named_params:
            p.copy_(distributed.like(state["trainable"][n], p) if sharded else state["trainable"][n])
    optimizer = state["optimizer"]
    if sharded:   # whole moments → this process's shards, laid out like their parameters
        params = t.optimizer.param_groups[0]["params"] if len(t.optimizer.param_groups) == 1 else None
        if params is None:
            raise ckpt.CheckpointMismatchError("FSDP resume expects one optimizer parameter group")
        optimizer = {"param_groups": optimizer["param_groups"],
                     "state": {i: {k: (distributed.like(v, params[int(i)]) if torch.is_tensor(v) and k != "step"
                                       else v) for k, v in entry.items()}
                               for i, entry in optimizer["state"].items()}}
    t.optimizer.load_state_dict(optimizer)
    t.scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    t.start_step = int(state["step"])
    t.rows = json.loads(state["rows"])
    if g is None or g.is_main:   # the saved counters are the sum over processes: counted once, by process 0
        t.counters.update(json.loads(state["counters"]))
    if g is None or g.is_main:
        print(f"{t.method.name}: resumed from step {t.start_step} of {t.total_steps} "
              f"(checkpoint {t.checkpoint_dir})", file=sys.stderr, flush=True)
