"""GradDiff (docs/methods.md, "GradDiff"): L = λ_f·(−CE_θ(B_f)) + λ_r·R, R = CE_θ(B_r) (GDR) or KL_r to θ₀ (KLR)."""
from __future__ import annotations

import dataclasses

from . import losses as L
from .base import LossMethod
from .gradients import with_term_means
from .objectives import RetainTerm, check_retain
from .registry import MethodConfig, choice, num, register_method


@register_method("graddiff")
class GradDiff(LossMethod):
    """KLR uses log-softmax on both sides and a per-token mean (ours); ``klr_form: muse_raw_logits`` replicates MUSE."""

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-5, gt=0)
        retain_loss: str = choice("gdr", ("gdr", "klr"))
        lambda_f: float = num(1.0, ge=0)
        lambda_r: float = num(1.0, ge=0)
        klr_form: str = choice("standard", ("standard", "muse_raw_logits"))

        def check(self) -> None:
            check_retain(self, ("gdr", "klr"))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.retain = RetainTerm(cfg.retain_loss, cfg.klr_form)

    @property
    def uses_retain(self) -> bool:
        return True

    def prepare(self, setup) -> None:
        self.retain.prepare(setup)

    def run(self, trainer):
        return with_term_means(trainer.train())   # run-level term metrics (0: no probe, SAM or GCD term)

    def forget_loss(self, ctx, mb):
        v = L.ga_loss(ctx.forward(mb).logits, mb.labels, denom=ctx.forget_tokens)
        return v, {"loss_ga": v}

    def retain_loss(self, ctx, mb):
        return self.retain.loss(ctx, mb)
