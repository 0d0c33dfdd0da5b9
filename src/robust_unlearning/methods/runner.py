"""``run_unlearning``: validate configs, train with the method, write model/, train_log.jsonl, run.json."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from ..models.io import save_model
from ..utils.io import atomic_write_json, atomic_write_jsonl
from ..utils.repro import provenance
from .loop import Trainer, TrainConfig
from .registry import ConfigError, get_method


def build_method(method: str, params: dict | None):
    """Look up ``method`` and validate ``params`` (raises ConfigError naming the key)."""
    cls = get_method(method)
    return cls(cls.Config.from_dict(params or {}))


def run_unlearning(model, tokenizer, method: str, params: dict, train_cfg: dict, forget: Sequence[dict],
                   retain: Sequence[dict], out_dir, seed: int, checkpoint_dir, probe_dir=None,
                   device: str = "auto", inputs: dict | None = None) -> dict[str, Any]:
    """Unlearn ``forget`` from ``model`` (trained in place) and write the run folder.

    Writes ``out_dir/model/`` (safetensors + manifest), ``out_dir/train_log.jsonl`` and ``out_dir/run.json``
    (provenance, status ok|diverged, cost). Resumable state lives in ``checkpoint_dir`` (outside the Snakemake
    output); on SIGTERM/SIGINT it is saved and :class:`~.loop.Preempted` (SystemExit 143/130) is raised — rerunning
    with the same arguments resumes. ``inputs`` (``utils.repro.input_revisions``: the base model's and the data's
    requested and resolved revisions) goes into run.json's provenance. Returns the run.json dict.

    One of several processes (docs/methods.md, "Several processes"): every process trains, process 0 writes the
    folder and returns the dict, the others return None.
    """
    m = build_method(method, params)
    tcfg = TrainConfig.from_dict(train_cfg or {})
    out_dir = Path(out_dir)
    trainer = Trainer(model, tokenizer, m, tcfg, forget, retain, seed, device=device, checkpoint_dir=checkpoint_dir,
                      probe_dir=probe_dir)
    snap_root = (Path(checkpoint_dir) if checkpoint_dir is not None else out_dir) / "snapshots"
    if tcfg.save_steps:
        if tcfg.lora is not None or method == "task_vector":
            raise ConfigError("save_steps", "snapshots are not supported with LoRA or task_vector (the trained "
                                            "weights are not the unlearned model there)")

        def snapshot(model, step):  # outside the Snakemake output until the run completes (survives preemption)
            save_model(model, tokenizer, snap_root / f"step~{step}")
        trainer.snapshot_fn = snapshot
    res = m.run(trainer)
    final = trainer.finish()
    if not trainer.is_main:
        return None
    save_model(final, tokenizer, out_dir / "model")
    if tcfg.save_steps and snap_root.parent != out_dir and snap_root.is_dir():
        for d in sorted(snap_root.iterdir()):
            if d.is_dir():
                shutil.copytree(d, out_dir / "snapshots" / d.name, dirs_exist_ok=True)
    atomic_write_jsonl(out_dir / "train_log.jsonl", res["log"])
    config = {"method": method, "params": m.cfg.to_dict(), "params_given": dict(params or {}),
              "train": trainer.tcfg.to_dict(),                  # in force: with the method's loop overrides
              "train_overrides": dict(getattr(trainer.tcfg, "overrides", {})),
              "probe_dir": str(probe_dir) if probe_dir is not None else None}
    snaps = sorted(p.name for p in (out_dir / "snapshots").iterdir()) if (out_dir / "snapshots").is_dir() else []
    run = {"method": method, "snapshots": snaps, "status": res["status"], "divergence": res["divergence"],
           "steps": res["steps_done"], "total_steps": res["total_steps"], "resumed_from": res["resumed_from"],
           "cost": res["cost"], "method_info": res["method_info"],
           "data": {"n_forget": len(trainer.forget), "n_retain": len(trainer.retain),
                    "forget_sha256": trainer.fingerprint["forget_sha256"],
                    "retain_sha256": trainer.fingerprint["retain_sha256"]},
           "provenance": provenance(config, seed, precision=res["cost"]["dtype"], inputs=inputs)}
    atomic_write_json(out_dir / "run.json", run, checksum=True)
    trainer.clear_checkpoint()
    if tcfg.save_steps and not tcfg.keep_checkpoint and snap_root.parent != out_dir:
        shutil.rmtree(snap_root, ignore_errors=True)
    return run
