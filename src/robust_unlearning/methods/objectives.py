"""Loss terms shared by several methods: the NPO forget term (all forms) with its reference provider, and the
retain terms (GDR, KLR). Each term's ``loss(ctx, mb, ...)`` is normalised over the logical batch (docs/methods.md, "The shared training loop").
"""
from __future__ import annotations

from typing import Any

import torch

from . import losses as L
from .registry import ConfigError


# ------------------------------------------------------------------------------------------- reference

class ReferenceLogprobs:
    """Reference quantities for the forget set (docs/methods.md, "NPO", "Cost model": reference caching).

    ``cache``: S_ref(x) and n(x) computed ONCE per forget example from θ₀ (the model itself, before training; no
    copy is ever made) — valid for ``sequence`` and ``batch_mean``. ``per_step``: a frozen copy, one forward per
    micro-batch per step, reused by every pass of that step (D7 fixed). ``per_pass``: recomputed at every use
    (released behaviour; cost only).
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.S: torch.Tensor | None = None
        self.n: torch.Tensor | None = None
        self.ref = None
        self._memo: dict = {}
        self._memo_step = None
        self.meta: dict[str, Any] = {"mode": mode}

    def prepare(self, setup, need_logits: bool = False) -> None:
        if self.mode == "cache" and not need_logits:
            model = setup.model
            was_training = model.training
            model.eval()
            S, n = [], []
            with torch.no_grad():
                for mb in setup.microbatches(setup.forget, "forget"):
                    setup.counters.add("ref_forward")
                    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits
                    S.append(L.sequence_logprob(logits, mb.labels, "sum").cpu())
                    n.append(L.target_counts(mb.labels).cpu())
            model.train(was_training)
            self.S, self.n = torch.cat(S), torch.cat(n).float()
            from .loop import examples_sha256
            self.meta.update(n_examples=len(setup.forget), token_ids_sha256=examples_sha256(setup.forget))
        else:
            self.ref = setup.reference_model()

    def _memoised(self, ctx, key, fn):
        if self.mode == "per_pass":
            return fn()
        if self._memo_step != ctx.step:
            self._memo, self._memo_step = {}, ctx.step
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def _ref_logits(self, ctx, mb) -> torch.Tensor:
        ctx.counters.add("ref_forward")
        with torch.no_grad():
            return self.ref(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits

    def seq(self, ctx, mb) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_ref(x) sum form, n(x)) for the examples of ``mb``, fp32 on the batch device."""
        if self.S is not None:
            return self.S[mb.index].to(mb.input_ids.device), self.n[mb.index].to(mb.input_ids.device)

        def compute():
            logits = self._ref_logits(ctx, mb)
            return L.sequence_logprob(logits, mb.labels, "sum"), L.target_counts(mb.labels).float()
        return self._memoised(ctx, ("seq",) + mb.key, compute)

    def logits(self, ctx, mb) -> torch.Tensor:
        return self._memoised(ctx, ("logits",) + mb.key, lambda: self._ref_logits(ctx, mb))


# ------------------------------------------------------------------------------------------- NPO term

NPO_FORMS = ("sequence", "batch_mean", "logit")


def npo_fields() -> dict:
    """Defaults of the NPO keys shared by npo, sam_npo and prism (documentation aid)."""
    return {"beta": 0.1, "npo_form": "sequence", "npo_reduction": "sum", "ref_logprobs": None}


def check_npo(cfg) -> None:
    """Cross-field rules of the NPO keys; resolves ``ref_logprobs: null`` to ``cache`` (or ``per_step`` for logit)."""
    if cfg.npo_form != "sequence":
        cfg.unused("npo_reduction", f"with npo_form: {cfg.npo_form} (only sequence)")
    if cfg.npo_form == "logit" and cfg.ref_logprobs == "cache":
        raise ConfigError("ref_logprobs", "npo_form: logit needs full reference logits, not cacheable; "
                                          "use per_step or per_pass")
    if cfg.ref_logprobs is None:
        cfg.ref_logprobs = "per_step" if cfg.npo_form == "logit" else "cache"


class NPOTerm:
    """L_NPO over the forget micro-batches (docs/methods.md, "NPO").

    ``sequence`` (a mean over examples) and ``logit`` (a mean over every logit of every owned position) are sums
    over the logical batch divided by its size, so each micro-batch is divided by the LOGICAL batch's count and k
    accumulated micro-batches give exactly the one-batch loss and gradient. ``batch_mean`` is non-linear in the
    batch (softplus of a batch-level CE difference): it is evaluated per micro-batch and averaged over
    micro-batches, which is what HF accumulation does in the reference code (WMDP NPO+GDR, batch 1 × accumulation 4).
    """

    def __init__(self, beta: float, form: str, reduction: str, ref_mode: str):
        self.beta, self.form, self.reduction = beta, form, reduction
        self.ref = ReferenceLogprobs(ref_mode)

    def prepare(self, setup) -> None:
        self.ref.prepare(setup, need_logits=self.form == "logit")

    def loss(self, ctx, mb, logits: torch.Tensor) -> torch.Tensor:
        if self.form == "sequence":
            s = L.sequence_logprob(logits, mb.labels, self.reduction)
            s_ref, n = self.ref.seq(ctx, mb)
            if self.reduction == "mean":
                s_ref = s_ref / n.clamp_min(1)
            return L.npo_sequence_loss(s, s_ref, self.beta, denom=ctx.forget_examples)
        if self.form == "batch_mean":
            s_ref, n = self.ref.seq(ctx, mb)
            ce_ref = -s_ref.sum() / n.sum().clamp_min(1)
            return L.npo_batch_mean_loss(L.token_ce(logits, mb.labels), ce_ref, self.beta) / max(len(ctx.forget_mbs), 1)
        return L.npo_logit_loss(logits, self.ref.logits(ctx, mb), self.beta, mask=mb.owned,
                                denom=ctx.forget_owned * logits.shape[-1])

    def info(self) -> dict:
        return {"npo_form": self.form, "npo_reduction": self.reduction, "ref": self.ref.meta}


# ------------------------------------------------------------------------------------------- retain term

class RetainTerm:
    """GDR (token-pooled CE) or KLR (per-token mean KL to θ₀; needs a frozen copy: one reference forward per
    retain micro-batch per step, not cacheable)."""

    def __init__(self, kind: str, klr_form: str = "standard"):
        self.kind, self.klr_form = kind, klr_form
        self.ref = ReferenceLogprobs("per_step") if kind == "klr" else None

    def prepare(self, setup) -> None:
        if self.ref is not None:
            self.ref.prepare(setup, need_logits=True)

    def loss(self, ctx, mb, logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        if logits is None:
            logits = ctx.forward(mb).logits
        if self.kind == "gdr":
            v = L.gdr_loss(logits, mb.labels, denom=ctx.retain_tokens)
            return v, {"loss_gdr": v}
        ref_logits = self.ref.logits(ctx, mb)
        denom = ctx.retain_examples if self.klr_form == "muse_raw_logits" else ctx.retain_tokens
        v = L.klr_loss(logits, ref_logits, mb.labels, denom=denom, form=self.klr_form)
        return v, {"loss_klr": v}


def check_retain(cfg, allowed: tuple) -> None:
    """Shared rules for retain_loss / lambda_r / klr_form."""
    if cfg.retain_loss not in allowed:
        raise ConfigError("retain_loss", f"must be one of {list(allowed)}, got {cfg.retain_loss!r}")
    if cfg.retain_loss == "none":
        cfg.unused("lambda_r", "with retain_loss: none")
    if cfg.retain_loss != "klr" and hasattr(cfg, "klr_form"):
        cfg.unused("klr_form", "unless retain_loss: klr")
