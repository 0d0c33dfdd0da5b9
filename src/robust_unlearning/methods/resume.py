"""Checkpoint/resume of a :class:`~.loop.Trainer` at step granularity (the on-disk format is in :mod:`.checkpoint`).

The state holds the trainable parameters, AdamW and scheduler states, the RNG states, the step counter, the log
rows and the pass counters; with the data order a pure function of (seed, step) (:mod:`.batching`), a resumed CPU
run is bit-identical to an uninterrupted one. A checkpoint whose fingerprint (method, params, train settings,
seed, data hashes) differs from the run's is refused, never mixed in.
"""
from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint as ckpt

if TYPE_CHECKING:
    from .loop import Trainer


def jsonable(obj):
    """``obj`` as it reads back from JSON (tuples become lists, odd types strings): fingerprints compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


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
