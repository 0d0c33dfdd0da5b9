"""GA — gradient ascent on the forget set (docs/methods.md, "GA"): L = −CE_θ(B_f)."""
from __future__ import annotations

import dataclasses

from . import losses as L
from .base import LossMethod
from .gradients import with_term_means
from .registry import MethodConfig, num, register_method


@register_method("ga")
class GA(LossMethod):
    """Unbounded objective: utility collapses quickly; evaluate several checkpoints (docs/methods.md, "GA")."""

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-5, gt=0)

    @property
    def lambda_f(self) -> float:
        return 1.0

    def run(self, trainer):
        return with_term_means(trainer.train())   # run-level term metrics (0: no probe, SAM or GCD term)

    def forget_loss(self, ctx, mb):
        v = L.ga_loss(ctx.forward(mb).logits, mb.labels, denom=ctx.forget_tokens)
        return v, {"loss_ga": v}
