"""A new attack in one file: a model attack that multiplies every floating-point weight by ``factor``.

The contract (docs/architecture.md, "Adding an attack"): a class registered under a name with ``kind`` "model"
(writes an attacked model to ``<out>/model``, which the evaluation then scores like any model) or "input" (writes
an artefact and implements ``evaluate``), a ``Config`` dataclass of its settings, and ``prepare``. Named like a
method plugin: ``ru --plugin tests/unit/plugins/toy_attack.py attack --attack toy_scale ...``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robust_unlearning.attacks.common import begin_prepare, load_for_attack, write_attack_json
from robust_unlearning.attacks.config import AttackConfig
from robust_unlearning.attacks.registry import register_attack
from robust_unlearning.models.io import save_model


@register_attack("toy_scale")             # the name used in --attack and in the config's attacks.enabled
class ToyScale:
    """W' = factor · W for every floating-point weight."""
    kind = "model"

    @dataclass
    class Config(AttackConfig):
        """The settings: unknown keys and wrong types are refused by ``from_dict``, ranges by ``check``."""
        attack_name: ClassVar[str] = "toy_scale"
        factor: float = 0.5

        def check(self) -> None:
            self.require(self.factor > 0, "factor", f"must be > 0, got {self.factor}")

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        started, cfg, out_dir = begin_prepare(cls, params, out_dir)     # validated settings, created folder
        model, tok = load_for_attack(model_dir, "cpu")
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point():
                    p.mul_(cfg.factor)
        save_model(model, tok, out_dir / "model")                       # the evaluation scores <out>/model
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started, result={"factor": cfg.factor})
