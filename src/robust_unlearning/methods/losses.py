"""Pure loss functions on logits, labels and hidden states (docs/methods.md).

Conventions
- ``labels`` are unshifted (aligned with ``input_ids``), −100 = no loss; the log-prob of token t is read from the
  logits at position t−1 (causal shift).
- All reductions run in fp32 (``log_softmax`` on ``logits.float()`` + gather; never subtract bf16 logits).
- Every loss that averages over a batch takes an optional ``denom``: the normaliser of the *logical* batch
  (total target tokens, total examples). Gradient accumulation passes the logical-batch denominator to each
  micro-batch so that the accumulated loss equals the full-batch loss exactly (docs/methods.md, "The shared training loop"). With
  ``denom=None`` the local (micro-batch) count is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _denom(local, denom) -> torch.Tensor | float:
    if denom is None:
        return local.clamp_min(1) if torch.is_tensor(local) else max(local, 1)
    return denom


# ---------------------------------------------------------------------------------------------- log-probs

def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ_t = log p(y_t | y_<t) with causal shift. Returns (logp [B,T−1] fp32, 0 where masked; mask [B,T−1] bool)."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    safe = shift_labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(shift_logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def target_counts(labels: torch.Tensor) -> torch.Tensor:
    """n(x) = Σ_t m_t per sequence (targets after the causal shift)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """S_θ(x) = Σ_t m_t ℓ_t (``sum``) or S̄_θ(x) = S_θ(x)/Σ_t m_t (``mean``); shape [B], fp32."""
    logp, mask = token_logprobs(logits, labels)
    s = logp.sum(-1)
    if reduction == "sum":
        return s
    if reduction == "mean":
        return s / mask.sum(-1).clamp_min(1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def token_ce(logits: torch.Tensor, labels: torch.Tensor, denom=None) -> torch.Tensor:
    """Token-pooled CE_θ(B) = −Σ_x Σ_t m_t ℓ_t / Σ_x Σ_t m_t (HF ``outputs.loss``, not a mean of sequence means)."""
    logp, mask = token_logprobs(logits, labels)
    return -logp.sum() / _denom(mask.sum(), denom)


def ga_loss(logits: torch.Tensor, labels: torch.Tensor, denom=None) -> torch.Tensor:
    """L_GA = −CE_θ(B_f) (docs/methods.md, "GA"): descending it ascends the forget NLL."""
    return -token_ce(logits, labels, denom)


def gdr_loss(logits: torch.Tensor, labels: torch.Tensor, denom=None) -> torch.Tensor:
    """GDR retain term: CE_θ(B_r) (docs/methods.md, "GradDiff")."""
    return token_ce(logits, labels, denom)


def klr_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, denom=None,
             form: str = "standard") -> torch.Tensor:
    """KL_r = (1/N_r) Σ_x Σ_t m_t KL(p_ref(·|y_<t) ‖ p_θ(·|y_<t)) (docs/methods.md, "GradDiff"), log-softmax on both sides.

    ``form="muse_raw_logits"`` replicates MUSE: ``F.kl_div(z_θ, z_ref, reduction='batchmean', log_target=True)``
    on raw logits over the whole [B,T,V] tensor (not a KL; divided by B only); ``denom`` then replaces B.
    """
    if form == "muse_raw_logits":
        tot = F.kl_div(logits.float(), ref_logits.float(), reduction="sum", log_target=True)
        return tot / _denom(logits.shape[0], denom)
    if form != "standard":
        raise ValueError(f"klr form must be 'standard' or 'muse_raw_logits', got {form!r}")
    lp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    lq = torch.log_softmax(ref_logits[:, :-1, :].float(), dim=-1)
    mask = labels[:, 1:] != IGNORE_INDEX
    kl_t = (lq.exp() * (lq - lp)).sum(-1)  # KL(p_ref ‖ p_θ) per position
    return (kl_t * mask).sum() / _denom(mask.sum(), denom)


# ---------------------------------------------------------------------------------------------- NPO family

def npo_sequence_loss(s_theta: torch.Tensor, s_ref: torch.Tensor, beta: float, denom=None) -> torch.Tensor:
    """L = (2/β)·mean_x softplus(β·(S_θ(x) − S_ref(x))) (docs/methods.md, "NPO", ``sequence``; pass S̄ for ``mean``)."""
    delta = s_theta.float() - s_ref.float()
    return (2.0 / beta) * F.softplus(beta * delta).sum() / _denom(delta.numel(), denom)


def npo_batch_mean_loss(ce_theta: torch.Tensor, ce_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """L = (2/β)·softplus(β·Δ_B), Δ_B = CE_ref(B) − CE_θ(B) (docs/methods.md, "NPO", ``batch_mean``; one scalar per batch)."""
    return (2.0 / beta) * F.softplus(beta * (ce_ref.float() - ce_theta.float()))


def npo_logit_loss(logits: torch.Tensor, ref_logits: torch.Tensor, beta: float, denom=None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Replication switch only — not NPO (docs/methods.md, "NPO"): (2/β)·mean_{b,t,v} softplus(β(z_θ − z_ref)),
    element-wise over every raw logit of every position the examples own.

    ``mask`` [B,T] marks those positions: the reference averages over its whole [B,T,V] tensor, whose padding is
    part of each example (MUSE chunks have none; the released WMDP code pads every example to max_len), while
    the padding our collation adds to reach the longest row of a micro-batch depends on how examples happen to
    be grouped and is left out. ``denom`` = (owned positions of the logical batch)·V, so that k accumulated
    micro-batches give exactly the loss and gradient of the one logical batch (a mean of micro-batch means would
    weight a short micro-batch's logits more). Without ``mask`` every position counts.
    """
    sp = F.softplus(beta * (logits.float() - ref_logits.float()))
    if mask is None:
        return (2.0 / beta) * sp.sum() / _denom(sp.numel(), denom)
    m = mask.to(sp.dtype)
    return (2.0 / beta) * (sp.sum(-1) * m).sum() / _denom(m.sum() * sp.shape[-1], denom)


def simnpo_loss(s_mean_theta: torch.Tensor, beta: float, gamma: float = 0.0, denom=None) -> torch.Tensor:
    """L_SimNPO = (2/β)·mean_x softplus(β·S̄_θ(x) + γ) (docs/methods.md, "SimNPO"); no reference model."""
    return (2.0 / beta) * F.softplus(beta * s_mean_theta.float() + gamma).sum() / _denom(s_mean_theta.numel(), denom)


# ---------------------------------------------------------------------------------------------- RMU

def mse_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, denom=None) -> torch.Tensor:
    """Mean squared error over tokens and hidden dims (docs/methods.md, "RMU").

    ``mask`` [B,T] (1 = content position) restricts the average to content tokens (our default); without a mask
    every position counts (reference). ``denom`` = number of averaged elements (tokens·d) of the logical batch.
    """
    diff = (h.float() - target.float()) ** 2
    if mask is None:
        return diff.sum() / _denom(diff.numel(), denom)
    m = mask.to(diff.dtype).unsqueeze(-1)
    return (diff * m).sum() / _denom(m.sum() * diff.shape[-1], denom)


def rmu_forget_loss(h: torch.Tensor, control: torch.Tensor, mask=None, denom=None) -> torch.Tensor:
    """L_forget = MSE(h_ℓ^θ(x_f), c·u), ``control`` = c·u of shape [d]."""
    return mse_loss(h, control.to(h.device).expand_as(h), mask, denom)


def rmu_retain_loss(h: torch.Tensor, h_ref: torch.Tensor, mask=None, denom=None) -> torch.Tensor:
    """L_retain = MSE(h_ℓ^θ(x_r), h_ℓ^ref(x_r))."""
    return mse_loss(h, h_ref, mask, denom)


# ---------------------------------------------------------------------------------------------- probe

def pool_mask(labels: torch.Tensor | None, attention_mask: torch.Tensor) -> torch.Tensor:
    """Content positions for pooling: labelled positions (response tokens of a dialogue, every token of raw text);
    rows without any label fall back to the attention mask."""
    if labels is None:
        return attention_mask.bool()
    m = (labels != IGNORE_INDEX) & attention_mask.bool()
    empty = ~m.any(-1)
    if empty.any():
        m = torch.where(empty.unsqueeze(-1), attention_mask.bool(), m)
    return m


def pool_hidden(h: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """π(h): ``mean`` over content positions or the ``last`` content position; returns fp32 [B,d] (docs/methods.md, "Stage 1: the robust probe")."""
    h = h.float()
    m = mask.bool()
    if pooling == "mean":
        mf = m.to(h.dtype).unsqueeze(-1)
        return (h * mf).sum(1) / mf.sum(1).clamp_min(1.0)
    if pooling == "last":
        pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
        last = torch.where(m, pos, torch.full_like(pos, -1)).max(-1).values.clamp_min(0)
        return h[torch.arange(h.shape[0], device=h.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")


def probe_ce_loss(probe_logits: torch.Tensor, target_class: int = 0, denom=None) -> torch.Tensor:
    """L_probe = mean_x −log softmax(p_φ(z))_target (docs/methods.md, "Stage 2: probe-guided forgetting"; target 0 = retain-like)."""
    lp = torch.log_softmax(probe_logits.float(), dim=-1)[:, target_class]
    return -lp.sum() / _denom(lp.numel(), denom)
