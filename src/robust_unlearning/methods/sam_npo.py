"""SAM+NPO (Fan et al. 2025; method.md §9): min_θ max_{‖δ‖≤ρ} ℓ_f(θ+δ) + λ_r·ℓ_r(θ), first-order δ = ρ·g/‖g‖.

Three passes per step (sam.py), exact restore from a backup copy (D11), the retain term chosen by an enumerated
value (D15: ``klr`` really is KLR here), no projection.
"""
from __future__ import annotations

import dataclasses

from .base import Method
from .objectives import NPOTerm, RetainTerm, check_npo, check_retain
from .registry import ConfigBase, choice, num, register_method
from .sam import sam_gcd_step


@register_method("sam_npo")
class SAMNPO(Method):

    @dataclasses.dataclass
    class Config(ConfigBase):
        lr: float = num(1e-5, gt=0)
        beta: float = num(0.1, gt=0)
        npo_form: str = choice("sequence", ("sequence", "batch_mean", "logit"))
        npo_reduction: str = choice("sum", ("sum", "mean"))
        ref_logprobs: str | None = choice(None, ("cache", "per_step", "per_pass"))
        rho: float = num(0.01, ge=0)
        retain_loss: str = choice("gdr", ("gdr", "klr", "none"))
        lambda_f: float = num(1.0, ge=0)
        lambda_r: float = num(1.0, ge=0)
        klr_form: str = choice("standard", ("standard", "muse_raw_logits"))
        sam_restore: str = choice("copy", ("copy", "subtract"))

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
        def forget_fn(mb):
            v = self.npo.loss(ctx, mb, ctx.forward(mb).logits)
            return v, {"loss_npo": v, "loss_forget": v}

        def retain_fn(mb):
            v, terms = self.retain.loss(ctx, mb)
            return v, {**terms, "loss_retain": v}

        c = self.cfg
        return sam_gcd_step(ctx, forget_fn, retain_fn if self.retain is not None else None, rho=c.rho,
                            lambda_f=c.lambda_f, lambda_r=c.lambda_r if self.retain is not None else 0.0,
                            gcd_scope="none", restore=c.sam_restore)

    def info(self) -> dict:
        return self.npo.info()
