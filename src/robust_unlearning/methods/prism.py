"""PRISM Stage 2 (method.md §10.2–§10.6): probe-guided forgetting with SAM on the forget objective and GCD.

ℓ_f(θ) = L_NPO(θ; B_f) + γ_adv(p)·L_probe(θ; B_f), L_probe = CE of the frozen probe towards class 0 (retain) on
π(hidden_states[L]) taken from the SAME forward as the NPO logits (no extra pass). SAM perturbs along ∇ℓ_f
(global ρ·g/‖g‖, exact restore), g_f is projected off g_r (GCD, global by default), and the update is
λ_f·g_f⊥ + λ_r·g_r, clipped to 1.0, AdamW. The γ schedule runs in our own step loop (D1: the released schedule
never fired) and is logged every step. Ablations are config values: ``gamma_max: 0`` / ``gamma_schedule: off``,
``rho: 0``, ``gcd_scope: none``. ``prism_compat: released`` sets the §11.1 right-hand column at once (also set
``retain_sampling: paired_modulo`` in the train config for full replication).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from . import losses as L
from .base import Method
from .objectives import NPOTerm, RetainTerm, check_npo, check_retain
from .registry import ConfigError, choice, num, register_method
from .sam_npo import SAMNPO
from .sam import sam_gcd_step

RELEASED = {"npo_form": "logit", "gcd_scope": "per_tensor", "gcd_mode": "always", "probe_pooling": "last",
            "gamma_schedule": "off", "ref_logprobs": "per_pass", "sam_restore": "subtract"}


def gamma_adv(p: float, gamma_max: float, schedule: str = "exp") -> float:
    """γ_adv(p) = γ_max·exp(−5(1−p)²) (``exp``), γ_max (``constant``), 0 (``off``) (method.md §10.5)."""
    if schedule == "off":
        return 0.0
    if schedule == "constant":
        return float(gamma_max)
    if schedule == "exp":
        return float(gamma_max) * math.exp(-5.0 * (1.0 - p) ** 2)
    raise ValueError(f"gamma_schedule must be exp, constant or off, got {schedule!r}")


@register_method("prism")
class PRISM(Method):

    @dataclasses.dataclass
    class Config(SAMNPO.Config):
        """SAM+NPO's keys (NPO's + rho, sam_restore; PRISM's retain term is required: gdr or klr), plus the
        probe-guided term (γ schedule), gradient-conflict decoupling and the probe pooling."""
        retain_loss: str = choice("gdr", ("gdr", "klr"))
        gamma_max: float = num(0.05, ge=0)
        gamma_schedule: str = choice("exp", ("exp", "constant", "off"))
        gamma_progress: str = choice("step", ("step", "epoch"))
        gcd_scope: str = choice("global", ("global", "per_tensor", "none"))
        gcd_mode: str = choice("always", ("always", "conflict_only"))
        gcd_eps: float = num(1e-6, ge=0)
        probe_pooling: str | None = choice(None, ("mean", "last"))   # None: the probe's own pooling (D3)
        prism_compat: str | None = choice(None, ("released",))

        @classmethod
        def from_dict(cls, d):
            d = dict(d or {})
            if d.get("prism_compat") == "released":
                d = {**RELEASED, **d}
            return super().from_dict(d)

        def check(self) -> None:
            check_npo(self)
            check_retain(self, ("gdr", "klr"))
            if self.gcd_scope == "none":
                self.unused("gcd_mode", "with gcd_scope: none")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.npo = NPOTerm(cfg.beta, cfg.npo_form, cfg.npo_reduction, cfg.ref_logprobs)
        self.retain = RetainTerm(cfg.retain_loss, cfg.klr_form)
        self.probe = None
        self.probe_meta: dict = {}
        self.layer = None
        self.pooling = None
        self._info: dict = {}

    @property
    def uses_retain(self) -> bool:
        return True

    @property
    def uses_probe(self) -> bool:
        return self.cfg.gamma_schedule != "off" and self.cfg.gamma_max > 0

    def prepare(self, setup) -> None:
        self.npo.prepare(setup)
        self.retain.prepare(setup)
        if not self.uses_probe:
            return
        if setup.probe is not None:
            self.probe, self.probe_meta = setup.probe
        elif setup.probe_dir is not None:
            from .probe import load_probe
            self.probe, self.probe_meta = load_probe(setup.probe_dir)
        else:
            raise ConfigError("probe_dir", "PRISM with gamma_max > 0 needs a trained probe (train_probe); "
                                           "pass probe_dir, or set gamma_schedule: off for the ablation")
        self.probe = self.probe.float().eval().requires_grad_(False)
        n_layers = int(setup.model.config.num_hidden_layers)
        self.layer = int(self.probe_meta["layer"])
        if not 0 <= self.layer <= n_layers:
            raise ConfigError("probe_dir", f"probe layer {self.layer} outside 0..{n_layers} of this model")
        hidden = int(setup.model.config.hidden_size)
        if int(self.probe_meta.get("in_dim", hidden)) != hidden:
            raise ConfigError("probe_dir", f"probe in_dim {self.probe_meta.get('in_dim')} != hidden size {hidden}")
        self.pooling = self.cfg.probe_pooling or self.probe_meta.get("pooling", "mean")
        from .loop import examples_sha256
        data = self.probe_meta.get("data", {})
        self._info = {"probe_layer": self.layer, "probe_pooling_train": self.probe_meta.get("pooling"),
                      "probe_pooling_unlearn": self.pooling, "probe_val_acc": self.probe_meta.get("val_acc"),
                      "probe_data_matches_run": data.get("forget_sha256") == examples_sha256(setup.forget)
                      and data.get("retain_sha256") == examples_sha256(setup.retain)}

    def gamma(self, ctx) -> float:
        return gamma_adv(ctx.progress(self.cfg.gamma_progress), self.cfg.gamma_max, self.cfg.gamma_schedule)

    def _probe_on(self, device: torch.device):
        """The probe lives on the device of its input (D14)."""
        if next(self.probe.parameters()).device != device:
            self.probe = self.probe.to(device)
        return self.probe

    def step(self, ctx):
        c = self.cfg
        gamma = self.gamma(ctx) if self.uses_probe else 0.0
        use_probe = gamma > 0

        def forget_fn(mb):
            out = ctx.forward(mb, hidden_states=use_probe)
            l_npo = self.npo.loss(ctx, mb, out.logits)
            terms = {"loss_npo": l_npo}
            loss = l_npo
            if use_probe:
                h = out.hidden_states[self.layer]
                z = L.pool_hidden(h, L.pool_mask(mb.labels, mb.attention_mask), self.pooling).float()
                logits_p = self._probe_on(z.device)(z)
                l_probe = L.probe_ce_loss(logits_p, 0, denom=ctx.forget_examples)
                loss = loss + gamma * l_probe
                terms["loss_probe"] = l_probe
                terms["probe_p_retain"] = torch.softmax(logits_p.detach(), -1)[:, 0].sum() / ctx.forget_examples
            terms["loss_forget"] = loss
            return loss, terms

        def retain_fn(mb):
            v, terms = self.retain.loss(ctx, mb)
            return v, {**terms, "loss_retain": v}

        logs = sam_gcd_step(ctx, forget_fn, retain_fn, rho=c.rho, lambda_f=c.lambda_f, lambda_r=c.lambda_r,
                            gcd_scope=c.gcd_scope, gcd_mode=c.gcd_mode, gcd_eps=c.gcd_eps, restore=c.sam_restore)
        logs["gamma"] = gamma
        return logs

    def info(self) -> dict:
        return {**self.npo.info(), **self._info, "gamma_schedule": self.cfg.gamma_schedule,
                "gamma_progress": self.cfg.gamma_progress, "gcd_scope": self.cfg.gcd_scope}
