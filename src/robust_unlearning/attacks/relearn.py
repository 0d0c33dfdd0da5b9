"""Relearning attack (docs/evaluation.md, "Relearning"): plain fine-tuning of the unlearned model on forget data.

Synthetic defaults: forget docs, 10/25/50 steps, lr 1e-4 cosine, batch 4, AdamW in the model's precision
(model.dtype; fp32 on the synthetic default), gradient checkpointing on CUDA, seeded 25/50/100%
subsets (cycled). Guard: the data must fingerprint-match the forget split of the same benchmark — relearning on
retain data by mistake is a known failure of reference scripts, so anything else is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from .common import load_for_attack, write_attack_json
from .config import AttackConfig
from .registry import register_attack


class RelearnDataError(ValueError):
    """Relearning data is not the benchmark's forget split."""


@register_attack("relearn")
class Relearn:
    kind = "model"
    # trains like an unlearning job: with unlearning.train.num_processes > 1 (the workflow passes it as
    # $RU_TRAIN_PROCESSES) `ru attack` runs it as that many processes (docs/methods.md, "Several processes")
    trains = True

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "relearn"
        steps: int = 25
        lr: float = 1e-4
        batch_size: int = 4
        fraction: float = 1.0
        source: Literal["raw", "chunks", "dialogue", "qa"] = "raw"
        max_len: int = 256
        schedule: Literal["cosine", "constant"] = "cosine"
        split: str = "forget"  # anything but "forget" is refused by the fingerprint guard
        # recompute activations in the backward pass (memory for time; the same numbers): None = on CUDA only,
        # where a 7B model's activations would not fit beside its weights and AdamW state
        gradient_checkpointing: bool | None = None

        def check(self) -> None:
            self.require(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
            self.require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
            self.require(self.batch_size >= 1, "batch_size", f"must be ≥ 1, got {self.batch_size}")
            self.require(0 < self.fraction <= 1, "fraction", f"must be in (0, 1], got {self.fraction}")
            self.require(self.max_len >= 8, "max_len", f"must be ≥ 8, got {self.max_len}")

    @classmethod
    def check_data(cls, bench, split: str, source: str = "raw") -> str:
        """The fingerprint of the data to relearn on; raises unless it equals the forget split's."""
        from ..data.unlearning_sets import forget_fingerprint
        expected = forget_fingerprint(bench, "forget", source)
        got = forget_fingerprint(bench, split, source)
        if got != expected:
            raise RelearnDataError(f"relearn data (split {split!r}, fingerprint {str(got)[:12]}…) is not the forget "
                                   f"split of this benchmark (fingerprint {str(expected)[:12]}…); refusing to relearn "
                                   "on non-forget data")
        return expected

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto",
                checkpoint_dir=None) -> dict:
        from ..data.unlearning_sets import build_examples, relearn_subset
        from ..methods import finetune
        from ..models.io import save_model

        started = time.time()
        cfg = cls.Config.from_dict(params)
        fingerprint = cls.check_data(bench, cfg.split, cfg.source)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model, tok = load_for_attack(model_dir, device)
        examples = build_examples(bench, tok, cfg.split, cfg.source, cfg.max_len)
        subset = relearn_subset(examples, cfg.fraction, seed)
        if not subset:
            raise RelearnDataError(f"relearn subset is empty (fraction {cfg.fraction}, {len(examples)} examples)")
        model.train()
        checkpointing = cfg.gradient_checkpointing
        if checkpointing is None:
            checkpointing = next(model.parameters()).device.type == "cuda"
        from ..methods import distributed

        # N processes (docs/methods.md, "Several processes"): the batch of a step as N micro-batches, one per
        # process (accumulation gives the one-batch gradient, so the attack is the same); one micro-batch of
        # batch_size would leave all processes but one idle
        group = distributed.current()
        n_proc = 1 if group is None else group.world
        bs, accum = (cfg.batch_size // n_proc, n_proc) if cfg.batch_size % n_proc == 0 else (cfg.batch_size, 1)
        # the model is loaded in the job's precision (ru attack --dtype = model.dtype) and trained in it
        stats, model = finetune(model, tok, subset, steps=cfg.steps, lr=cfg.lr, batch_size=bs,
                                seed=seed, schedule=cfg.schedule, checkpoint_dir=checkpoint_dir,
                                log_path=out_dir / "train_log.jsonl",
                                train_cfg={"gradient_checkpointing": bool(checkpointing), "grad_accum": accum},
                                return_model=True)
        if group is not None and not group.is_main:   # one of several processes: process 0 writes
            return {}
        model.eval()
        save_model(model, tok, out_dir / "model")
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started,
                                 result={"n_examples": len(examples), "n_subset": len(subset),
                                         "data_fingerprint": fingerprint,
                                         "finetune": {k: v for k, v in dict(stats).items() if k != "log"}},
                                 status=str(dict(stats).get("status", "ok")))
