"""SimNPO (docs/methods.md, "SimNPO"): L = λ_f·(2/β)·mean softplus(β·S̄_θ(x) + γ) + λ_r·R; no reference model.

γ here is the additive margin inside the softplus; OpenUnlearning's δ maps to γ = β·δ.
"""
from __future__ import annotations

import dataclasses

from . import losses as L
from .base import LossMethod
from .gradients import with_term_means
from .objectives import RetainTerm, check_retain
from .registry import MethodConfig, choice, num, register_method


@register_method("simnpo")
class SimNPO(LossMethod):

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-5, gt=0)
        beta: float = num(4.5, gt=0)
        gamma: float = 0.0
        lambda_f: float = num(0.125, ge=0)
        lambda_r: float = num(1.0, ge=0)
        retain_loss: str = choice("gdr", ("gdr", "klr", "none"))
        klr_form: str = choice("standard", ("standard", "muse_raw_logits"))

        def check(self) -> None:
            check_retain(self, ("gdr", "klr", "none"))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.retain = RetainTerm(cfg.retain_loss, cfg.klr_form) if cfg.retain_loss != "none" else None

    @property
    def uses_retain(self) -> bool:
        return self.retain is not None

    def prepare(self, setup) -> None:
        if self.retain is not None:
            self.retain.prepare(setup)

    def run(self, trainer):
        return with_term_means(trainer.train())   # run-level term metrics (0: no probe, SAM or GCD term)

    def forget_loss(self, ctx, mb):
        s_mean = L.sequence_logprob(ctx.forward(mb).logits, mb.labels, "mean")
        v = L.simnpo_loss(s_mean, self.cfg.beta, self.cfg.gamma, denom=ctx.forget_examples)
        return v, {"loss_simnpo": v}

    def retain_loss(self, ctx, mb):
        return self.retain.loss(ctx, mb)
