"""The three-pass SAM (+GCD) step shared by SAM+NPO (docs/methods.md, "SAM+NPO") and PRISM (docs/methods.md, "One PRISM step").

Phase-wise over the k micro-batches of one logical batch (docs/methods.md, "The shared training loop"):
  pass 1  g   = ∇ℓ_f(θ)            accumulated in .grad
          δ   = ρ·g/‖g‖ (global; 0 if ρ = 0 or ‖g‖ = 0); backup θ into the spare buffer; θ ← θ + δ
  pass 2  g_f = ∇ℓ_f(θ + δ)        same micro-batches
          θ ← backup (exact), move g_f into the spare buffer
  pass 3  g_r = ∇ℓ_r(θ)            accumulated in .grad
          .grad ← λ_f·P(g_f) + λ_r·g_r   (P = GCD projection or identity)
One gradient-sized spare buffer in total (backup of θ, then g_f). With ρ = 0 pass 2 is skipped (g_f = g).

Logged per step (each from quantities the step has anyway, no extra pass): ``gnorm_forget`` = ‖∇ℓ_f(θ)‖,
``sam_delta_norm`` = ‖δ‖, ``sam_loss_gain`` = ℓ_f(θ+δ) − ℓ_f(θ) (what the perturbation adds to the forget loss),
``cos_fr`` = cos(g_f, g_r) and, with a projection, ``gcd_removed_fraction`` = ‖g_f − P(g_f)‖/‖g_f‖.
``first_pass`` replaces pass 1 (PRISM fills ``.grad`` itself to keep ∇L_NPO and ∇L_probe apart).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .gradients import combine_gcd, global_norm, grads_of, local_parts, sam_perturb, sam_restore


def sam_gcd_step(ctx, forget_fn: Callable, retain_fn: Callable | None, *, rho: float, lambda_f: float,
                 lambda_r: float, gcd_scope: str = "none", gcd_mode: str = "always", gcd_eps: float = 1e-6,
                 restore: str = "copy", first_pass: Callable[[], dict] | None = None) -> dict[str, Any]:
    params = ctx.params
    logs: dict[str, Any] = {}
    t1 = first_pass() if first_pass is not None else ctx.accumulate(forget_fn, ctx.forget_mbs, "forget")
    logs.update(t1)
    buf = ctx.buffer()
    if rho > 0:
        scale, gnorm = sam_perturb(params, rho, buf, restore)
        logs["gnorm_sam"] = gnorm
        logs["gnorm_forget"] = gnorm
        logs["sam_delta_norm"] = scale * gnorm
        ctx.zero_grad()
        try:
            t2 = ctx.accumulate(forget_fn, ctx.forget_mbs, "forget_perturbed")
        finally:  # also on a NaN in pass 2: a diverged run keeps θ, not θ + δ
            sam_restore(params, buf, scale, restore)
        logs.update({f"{k}_perturbed": v for k, v in t2.items()})
        logs["sam_loss_gain"] = t2["loss_forget"] - t1["loss_forget"]
    else:
        logs["gnorm_forget"] = global_norm(grads_of(params))
    with torch.no_grad():
        torch._foreach_copy_(local_parts(buf), local_parts(grads_of(params)))   # buffer ← g_f
    loss_f = t2["loss_forget"] if rho > 0 else t1["loss_forget"]
    total = lambda_f * t1["loss_forget"]
    if retain_fn is not None and ctx.retain_mbs and lambda_r > 0:
        ctx.zero_grad()
        logs.update(ctx.accumulate(retain_fn, ctx.retain_mbs, "retain"))
        stats = combine_gcd(buf, grads_of(params), lambda_f, lambda_r, gcd_scope, gcd_mode, gcd_eps)
        logs.update(stats)
        total += lambda_r * logs["loss_retain"]
    else:
        with torch.no_grad():
            g = grads_of(params)
            torch._foreach_copy_(local_parts(g), local_parts(buf))
            if lambda_f != 1.0:
                torch._foreach_mul_(local_parts(g), lambda_f)
    logs["loss_forget_at_update"] = loss_f
    logs["loss"] = total
    return logs
