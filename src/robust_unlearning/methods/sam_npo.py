"""SAM+NPO (Fan et al. 2025; docs/methods.md, "SAM+NPO"): min_θ max_{‖δ‖≤ρ} ℓ_f(θ+δ) + λ_r·ℓ_r(θ), first-order δ = ρ·g/‖g‖.

Three passes per step (sam.py), exact restore from a backup copy (D11), the retain term chosen by an enumerated
value (D15: ``klr`` really is KLR here), no projection. Everything but the step is NPO's (same objective terms,
same keys), so the class extends :class:`~.npo.NPO` and adds ``rho`` and ``sam_restore``.
"""
from __future__ import annotations

import dataclasses

from .npo import NPO
from .registry import choice, num, register_method
from .sam import sam_gcd_step


@register_method("sam_npo")
class SAMNPO(NPO):

    @dataclasses.dataclass
    class Config(NPO.Config):
        rho: float = num(0.01, ge=0)
        sam_restore: str = choice("copy", ("copy", "subtract"))

    def step(self, ctx):
        def forget_fn(mb):
            v = self.npo.loss(ctx, mb, ctx.forward(mb).logits)
            return v, {"loss_npo": v, "loss_forget": v}

        def retain_fn(mb):
            v, terms = self.retain.loss(ctx, mb)
            return v, {**terms, "loss_retain": v}

        c = self.cfg
        logs = sam_gcd_step(ctx, forget_fn, retain_fn if self.retain is not None else None, rho=c.rho,
                            lambda_f=c.lambda_f, lambda_r=c.lambda_r if self.retain is not None else 0.0,
                            gcd_scope="none", restore=c.sam_restore)
        logs["gnorm_npo"] = logs["gnorm_forget"]   # ℓ_f = L_NPO here
        return logs
