"""NPO (+GDR / +KLR) (docs/methods.md, "NPO"): L = λ_f·L_NPO + λ_r·R.

Default ``npo_form: sequence`` / ``npo_reduction: sum`` with S_ref cached once per forget example (no reference
forward per step, no reference copy). ``logit`` is a replication switch only (not NPO, docs/methods.md, "NPO", D8).
"""
from __future__ import annotations

import dataclasses

from .base import LossMethod
from .gradients import with_term_means
from .objectives import NPOTerm, RetainTerm, check_npo, check_retain
from .registry import MethodConfig, choice, num, register_method


@register_method("npo")
class NPO(LossMethod):

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-5, gt=0)
        beta: float = num(0.1, gt=0)
        npo_form: str = choice("sequence", ("sequence", "batch_mean", "logit"))
        npo_reduction: str = choice("sum", ("sum", "mean"))
        ref_logprobs: str | None = choice(None, ("cache", "per_step", "per_pass"))
        retain_loss: str = choice("gdr", ("gdr", "klr", "none"))
        lambda_f: float = num(1.0, ge=0)
        lambda_r: float = num(1.0, ge=0)
        klr_form: str = choice("standard", ("standard", "muse_raw_logits"))

        def check(self) -> None:
            check_npo(self)
            check_retain(self, ("gdr", "klr", "none"))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.npo = NPOTerm(cfg.beta, cfg.npo_form, cfg.npo_reduction, cfg.ref_logprobs)
        self.retain = RetainTerm(cfg.retain_loss, cfg.klr_form) if cfg.retain_loss != "none" else None

    @property
    def uses_retain(self) -> bool:
        return self.retain is not None

    def prepare(self, setup) -> None:
        self.npo.prepare(setup)
        if self.retain is not None:
            self.retain.prepare(setup)

    def step(self, ctx):
        logs = super().step(ctx)
        if "gnorm_f" in logs:   # with log_grad_stats: the forget gradient of NPO is ∇L_NPO
            logs["gnorm_npo"] = logs["gnorm_f"]
        return logs

    def run(self, trainer):
        return with_term_means(trainer.train())

    def forget_loss(self, ctx, mb):
        v = self.npo.loss(ctx, mb, ctx.forward(mb).logits)
        return v, {"loss_npo": v}

    def retain_loss(self, ctx, mb):
        return self.retain.loss(ctx, mb)

    def info(self) -> dict:
        return self.npo.info()
