"""Gradient helpers for multi-pass methods (docs/methods.md, "SAM on the forget objective", "GCD", "The shared training loop").

Every helper works on an explicit, ordered list of parameters (keyed by parameter, never by "has a gradient",
cf. defect D16), computes norms and inner products in fp32, and reuses caller-owned buffers instead of
allocating gradient-sized copies each step (docs/methods.md, "Cost model": one spare buffer for PRISM).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

from .distributed import PRIVATE, local_part, local_parts, reduce_sharded, sharded_mask


class NonFiniteLoss(FloatingPointError):
    """A loss term (or gradient norm) is NaN/Inf; the loop turns it into a DivergenceError."""

    def __init__(self, term: str, value: float, phase: str = ""):
        self.term, self.value, self.phase = term, value, phase
        super().__init__(f"non-finite {term} = {value}" + (f" in phase {phase!r}" if phase else ""))


def grads_of(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter; a parameter without a gradient gets a zero tensor (kept in ``.grad``)."""
    out = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append(p.grad)
    return out


def zero_grads(params: Sequence[torch.Tensor]) -> None:
    """Zero in place (keeps the allocation; ``None`` grads stay ``None``)."""
    gs = [p.grad for p in params if p.grad is not None]
    if gs:
        torch._foreach_zero_(local_parts(gs))


def per_tensor_dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[float]:
    """⟨a_j, b_j⟩ per tensor in fp32, gathered with one host sync. For FSDP shards (several processes) the
    per-shard partial sums are added over processes (docs/methods.md, "Several processes")."""
    mask = sharded_mask(a)
    if mask is not None:
        a, b = [local_part(x) for x in a], [local_part(y) for y in b]
    vals = [torch.dot(x.detach().reshape(-1).float(), y.detach().reshape(-1).float()) for x, y in zip(a, b)]
    if not vals:
        return []
    dev = vals[0].device
    out = torch.stack([v.to(dev) for v in vals]).tolist()
    return out if mask is None else reduce_sharded(out, mask)


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Global ⟨a, b⟩ over all tensors (fp32 per tensor, summed in double)."""
    return float(sum(per_tensor_dots(a, b)))


def global_norm(tensors: Sequence[torch.Tensor]) -> float:
    """‖·‖ over all tensors jointly, fp32 per tensor (docs/methods.md, "Notation")."""
    if not tensors:
        return 0.0
    mask = sharded_mask(tensors)
    if mask is not None:   # FSDP shards: squared norms of the local shards, summed over processes
        norms = [torch.linalg.vector_norm(local_part(t).detach(), dtype=torch.float32) for t in tensors]
        sq = [n * n for n in torch.stack([n.to(norms[0].device) for n in norms]).double().tolist()]
        return math.sqrt(sum(reduce_sharded(sq, mask)))
    norms = [torch.linalg.vector_norm(t.detach(), dtype=torch.float32) for t in tensors]
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])))


def accumulate_grad(loss_fn: Callable, microbatches: Iterable, phase: str = "",
                    on_backward: Callable[[], None] | None = None, strict: bool = True) -> dict[str, float]:
    """Σ_j ∇ loss_fn(mb_j) accumulated in ``.grad``; returns the summed logged terms.

    ``loss_fn(mb)`` returns ``(loss, terms)`` where ``loss`` is already normalised by the *logical*-batch
    denominator (so the accumulated gradient equals the full-batch gradient, docs/methods.md, "The shared training loop") and ``terms``
    maps names to the tensors/floats to log. Raises :class:`NonFiniteLoss` before a non-finite backward.
    ``strict=False`` (one of several processes, :mod:`.distributed`): never raises and always runs the backward,
    returning the losses' values too (under private names) for the caller to check after summing over processes.
    """
    totals: dict[str, float] = {}
    for mb in microbatches:
        loss, terms = loss_fn(mb)
        values = _term_values(terms, phase, [(f"loss_{phase}" if phase else "loss", loss)], strict)
        if loss.requires_grad:
            loss.backward()
            if on_backward is not None:
                on_backward()
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v
    return totals


def _term_values(terms: dict, phase: str, losses: Sequence[tuple[str, torch.Tensor]],
                 strict: bool = True) -> dict[str, float]:
    """The micro-batch's logged terms as floats; a non-finite term or loss raises NonFiniteLoss naming it.
    ``strict=False``: no check, and the losses' values are added under private names (prefix ``PRIVATE``)."""
    values = {k: (float(v.detach()) if torch.is_tensor(v) else float(v)) for k, v in terms.items()}
    named = [(name, float(loss.detach())) for name, loss in losses]
    if not strict:
        return {**values, **{PRIVATE + name: v for name, v in named}}
    for k, v in [*values.items(), *named]:
        if not math.isfinite(v):
            raise NonFiniteLoss(k, v, phase)
    return values


def accumulate_split(loss_fn: Callable, microbatches: Iterable, params: Sequence[torch.Tensor],
                     aux_buffer: Sequence[torch.Tensor], phase: str = "",
                     on_backward: Callable[[], None] | None = None,
                     on_aux_backward: Callable[[], None] | None = None, strict: bool = True) -> dict[str, float]:
    """Two gradients from ONE forward per micro-batch: Σ_j ∇main_j accumulates in ``.grad``, Σ_j ∇aux_j in
    ``aux_buffer`` (which the caller has zeroed).

    ``loss_fn(mb)`` returns ``(main, aux, terms)``, both losses normalised over the logical batch. Used by PRISM
    to keep ∇L_NPO and ∇L_probe apart, so that both norms can be logged and the relative γ can be set from them.
    Cost: one extra backward of ``aux`` per micro-batch through the layers ``aux`` depends on (for the probe: the
    layers up to the probe layer), and a transient copy of those gradients (``torch.autograd.grad``).
    ``strict``: as in :func:`accumulate_grad`.
    """
    totals: dict[str, float] = {}
    params = list(params)
    for mb in microbatches:
        main, aux, terms = loss_fn(mb)
        values = _term_values(terms, phase, [(f"loss_{phase}_main", main), (f"loss_{phase}_aux", aux)], strict)
        if aux.requires_grad:
            ga = torch.autograd.grad(aux, params, retain_graph=main.requires_grad, allow_unused=True)
            with torch.no_grad():
                pairs = [(b, g) for b, g in zip(aux_buffer, ga) if g is not None]
                if pairs:
                    torch._foreach_add_([b for b, _ in pairs], [g for _, g in pairs])
            del ga
            if on_aux_backward is not None:
                on_aux_backward()
        if main.requires_grad:
            main.backward()
            if on_backward is not None:
                on_backward()
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v
    return totals


# ------------------------------------------------------------------------------------------------- per-step terms

#: Run-level means of per-step terms (written into run.json "cost" next to the cost numbers; report/collect.py).
#: A method whose update has no such term (NPO has no probe term, no SAM perturbation, no GCD) reports 0.0:
#: the term's share of its update is exactly zero. A term that exists but was never finite is NaN.
TERM_METRICS = ("probe_grad_ratio", "sam_loss_gain", "gcd_removed_fraction")


def term_means(rows: Sequence[dict]) -> dict[str, float]:
    """Mean over the logged steps of each of :data:`TERM_METRICS` (non-finite steps skipped)."""
    out = {}
    for name in TERM_METRICS:
        present = [r[name] for r in rows if name in r]
        vals = [float(v) for v in present if isinstance(v, (int, float)) and math.isfinite(float(v))]
        out[name] = sum(vals) / len(vals) if vals else (math.nan if present else 0.0)
    return out


def with_term_means(res: dict) -> dict:
    """``res`` of ``Trainer.train`` with :func:`term_means` of its log added to ``res["cost"]`` (NaN → None: JSON
    has no NaN; the report reads None as a missing number)."""
    means = term_means(res.get("log") or [])
    res.setdefault("cost", {}).update({k: (None if math.isnan(v) else v) for k, v in means.items()})
    return res


# ------------------------------------------------------------------------------------------------- SAM

def sam_perturb(params: Sequence[torch.Tensor], rho: float, buffer: Sequence[torch.Tensor],
                restore: str = "copy") -> tuple[float, float]:
    """θ ← θ + δ, δ = ρ·g/‖g‖ with g = current ``.grad`` (docs/methods.md, "SAM on the forget objective"). Returns (scale = ρ/‖g‖, ‖g‖).

    ``restore="copy"`` stores θ in ``buffer`` (exact restore, default); ``"subtract"`` stores g there (reference
    behaviour: θ −= δ afterwards, not bit-exact in bf16, defect D11). δ = 0 if ρ = 0 or ‖g‖ = 0.
    """
    g = grads_of(params)
    n = global_norm(g)
    scale = rho / (n + 1e-12) if (rho > 0 and n > 0) else 0.0
    with torch.no_grad():
        src = [p.data for p in params] if restore == "copy" else g
        torch._foreach_copy_(local_parts(buffer), local_parts(src))
        if scale:
            torch._foreach_add_(local_parts([p.data for p in params]), local_parts(g), alpha=scale)
    return scale, n


def sam_restore(params: Sequence[torch.Tensor], buffer: Sequence[torch.Tensor], scale: float,
                restore: str = "copy") -> None:
    """Undo :func:`sam_perturb`: θ ← backup (``copy``) or θ ← θ − scale·g (``subtract``)."""
    with torch.no_grad():
        if restore == "copy":
            torch._foreach_copy_(local_parts([p.data for p in params]), local_parts(buffer))
        elif scale:
            torch._foreach_add_(local_parts([p.data for p in params]), local_parts(buffer), alpha=-scale)


# ------------------------------------------------------------------------------------------------- GCD

def gcd_coefficients(g_f: Sequence[torch.Tensor], g_r: Sequence[torch.Tensor], scope: str = "global",
                     mode: str = "always", eps: float = 1e-6) -> tuple[list[float], dict]:
    """Projection coefficients c_j such that g_f⊥,j = g_f,j − c_j·g_r,j (docs/methods.md, "GCD").

    ``global``: one c = ⟨g_f,g_r⟩/(‖g_r‖²+ε) for every tensor (paper); ``per_tensor``: c_j per tensor with
    ‖g_r,j‖ > 0 (released code, D5); ``none``: c = 0. ``conflict_only`` projects only where the inner product
    (global, or per tensor) is negative. Returns (coefficients, stats with the global inner product and norms).
    """
    d = per_tensor_dots(g_f, g_r)
    rr = per_tensor_dots(g_r, g_r)
    ff = per_tensor_dots(g_f, g_f)
    inner, nr2, nf2 = sum(d), sum(rr), sum(ff)
    stats = {"gf_dot_gr": inner, "gnorm_f": math.sqrt(max(nf2, 0.0)), "gnorm_r": math.sqrt(max(nr2, 0.0))}
    denom = math.sqrt(max(nf2, 0.0) * max(nr2, 0.0))
    stats["cos_fr"] = inner / denom if denom > 0 else 0.0
    n = len(d)
    if scope == "none":
        coeffs = [0.0] * n
    elif scope == "global":
        c = inner / (nr2 + eps) if nr2 > 0 else 0.0
        if mode == "conflict_only" and inner >= 0:
            c = 0.0
        coeffs = [c] * n
        stats["gcd_c"] = c
    elif scope == "per_tensor":
        coeffs = []
        for dj, rj in zip(d, rr):
            cj = dj / (rj + eps) if rj > 0 else 0.0
            if mode == "conflict_only" and dj >= 0:
                cj = 0.0
            coeffs.append(cj)
        stats["gcd_frac_projected"] = sum(1 for c in coeffs if c != 0.0) / max(n, 1)
    else:
        raise ValueError(f"gcd_scope must be global, per_tensor or none, got {scope!r}")
    if scope != "none":
        # ‖g_f − g_f⊥‖/‖g_f‖ = ‖Σ_j c_j·g_r,j‖/‖g_f‖: how much of the forget gradient the projection removes
        removed = math.sqrt(sum(c * c * r for c, r in zip(coeffs, rr)))
        stats["gcd_removed_fraction"] = removed / stats["gnorm_f"] if stats["gnorm_f"] > 0 else math.nan
    return coeffs, stats


def project_out(g_f: Sequence[torch.Tensor], g_r: Sequence[torch.Tensor], scope: str = "global",
                mode: str = "always", eps: float = 1e-6) -> dict:
    """In place: g_f ← g_f − c·g_r (global or per tensor). Returns the stats of :func:`gcd_coefficients`."""
    coeffs, stats = gcd_coefficients(g_f, g_r, scope, mode, eps)
    with torch.no_grad():
        for x, y, c in zip(local_parts(g_f), local_parts(g_r), coeffs):
            if c:
                x.add_(y, alpha=-c)
    return stats


def combine_gcd(g_f: Sequence[torch.Tensor], out_g_r: Sequence[torch.Tensor], lambda_f: float, lambda_r: float,
                scope: str = "global", mode: str = "always", eps: float = 1e-6) -> dict:
    """In place on ``out_g_r`` (the ``.grad`` tensors holding g_r): g ← λ_f·(g_f − c·g_r) + λ_r·g_r.

    Written as g_r·(λ_r − λ_f·c) + λ_f·g_f so that no third gradient-sized buffer is needed.
    """
    coeffs, stats = gcd_coefficients(g_f, out_g_r, scope, mode, eps)
    with torch.no_grad():
        for f, r, c in zip(local_parts(g_f), local_parts(out_g_r), coeffs):
            r.mul_(lambda_r - lambda_f * c).add_(f, alpha=lambda_f)
    return stats


def grad_stats(g_f: Sequence[torch.Tensor], g_r: Sequence[torch.Tensor]) -> dict:
    """‖g_f‖, ‖g_r‖ and cos(g_f, g_r) (fp32), for the per-step log."""
    _, stats = gcd_coefficients(g_f, g_r, "none")
    return stats


def clip_grads(params: Sequence[torch.Tensor], max_norm: float | None) -> float:
    """Clip the final combined gradient to ``max_norm`` (global, fp32 norm; torch's 1e-6 guard). Returns the pre-clip norm."""
    g = [p.grad for p in params if p.grad is not None]
    n = global_norm(g)
    if max_norm is not None and math.isfinite(n) and n > max_norm:
        coef = max_norm / (n + 1e-6)
        with torch.no_grad():
            torch._foreach_mul_(local_parts(g), coef)
    return n
