"""Parameter-noise attack (docs/evaluation.md, "Parameter noise"): W' = W + σ·std(W)·N(0, I) per tensor, seeded.

Noise is drawn per tensor from a generator seeded with derive_seed(seed, tensor name), so the draw of one tensor
does not depend on which others are perturbed. Tied tensors are perturbed once. Tensors with std 0 (e.g. fresh
norm weights, all ones) are left unchanged by construction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

import torch

from ..utils.repro import derive_seed
from .common import load_for_attack, write_attack_json
from .config import AttackConfig
from .registry import register_attack


def add_weight_noise(model, sigma: float, seed: int, scope: str = "all") -> dict:
    """In place. scope "all": every floating parameter; "matrices": only ≥2-d tensors (no norms/biases)."""
    n, numel = 0, 0
    with torch.no_grad():
        for name, p in model.named_parameters():  # named_parameters skips tied duplicates
            if not p.is_floating_point() or (scope == "matrices" and p.dim() < 2) or p.numel() < 2:
                continue
            gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "weight_noise", name))
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            std = p.detach().float().std()
            p.add_((sigma * std * noise).to(device=p.device, dtype=p.dtype))
            n += 1
            numel += p.numel()
    return {"n_tensors": n, "n_weights": numel}


@register_attack("weight_noise")
class WeightNoise:
    kind = "model"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "weight_noise"
        sigma: float = 0.01
        seed: Optional[int] = None  # noise seed; None → the run seed
        scope: Literal["all", "matrices"] = "all"

        def check(self) -> None:
            self.require(self.sigma >= 0, "sigma", f"must be ≥ 0, got {self.sigma}")

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        from ..models.io import save_model

        started = time.time()
        cfg = cls.Config.from_dict(params)
        noise_seed = cfg.seed if cfg.seed is not None else seed
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # on the CPU whatever the job's device: the seeded noise is then the same on every machine (one pass
        # over the weights, no forward); the precision is the job's (model.dtype)
        model, tok = load_for_attack(model_dir, "cpu")
        stats = add_weight_noise(model, cfg.sigma, noise_seed, cfg.scope)
        save_model(model, tok, out_dir / "model")
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started,
                                 result={"noise_seed": noise_seed, **stats})
