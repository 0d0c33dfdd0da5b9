"""PRISM Stage 2 (docs/methods.md, "PRISM"): probe-guided forgetting with SAM on the forget objective and GCD.

ℓ_f(θ) = L_NPO(θ; B_f) + γ_adv(p)·L_probe(θ; B_f), L_probe = CE of the frozen probe towards class 0 (retain) on
π(hidden_states[L]) taken from the SAME forward as the NPO logits (no extra pass). SAM perturbs along ∇ℓ_f
(global ρ·g/‖g‖, exact restore), g_f is projected off g_r (GCD, global by default), and the update is
λ_f·g_f⊥ + λ_r·g_r, clipped to 1.0, AdamW. The γ schedule runs in our own step loop (D1: the released schedule
never fired) and is logged every step. Ablations are config values: ``gamma_max: 0`` / ``gamma_schedule: off``,
``rho: 0``, ``gcd_scope: none``. ``prism_compat: released`` sets the released-code column of docs/methods.md, "Switches that reproduce the released code", at once (also set
``retain_sampling: paired_modulo`` in the train config for full replication).

γ modes (``gamma_mode``):
- ``absolute`` (paper-faithful, the class default): γ_t = γ_adv(p) = γ_max·s(p), s(p) = exp(−5(1−p)²).
- ``relative`` (OUR EXTENSION, not in the paper): γ_t = gamma_target·s(p)·‖∇L_NPO‖/‖∇L_probe‖, both gradients at θ
  on the step's forget batch, so that ‖γ_t·∇L_probe‖ = gamma_target·s(p)·‖∇L_NPO‖ exactly. Why: the paper's
  γ_max = 0.05 was tuned for the released element-wise ``logit`` NPO, whose gradient is tiny; under the sequence
  form (sum over tokens) ‖∇L_NPO‖ is 100–500× larger, so γ_max = 0.05 leaves the probe term at ~1e-4 of the
  forget gradient (docs/methods.md, PRISM γ). gamma_target is scale-free: it is the probe-to-NPO gradient norm
  ratio at the end of training (its mean over a run with the ``exp`` schedule is ≈ 0.40·gamma_target). The
  paper's γ relates to it through the logged ratio: an absolute run with γ_max has gamma_target-equivalent
  γ_max·‖∇L_probe‖/‖∇L_NPO‖, which the per-step log reports as ``probe_grad_ratio``/s(p).
  The γ_t of a step is set once from the gradients at θ and reused for the SAM pass at θ+δ.

Per step (both modes) the log has ``gnorm_npo`` = ‖∇L_NPO‖, ``gnorm_probe`` = ‖∇L_probe‖ (unweighted),
``gnorm_probe_weighted`` = ‖γ_t·∇L_probe‖, ``probe_grad_ratio`` = their ratio, ``cos_npo_probe``, ``loss_probe``,
``gamma`` and the SAM/GCD terms of :func:`~.sam.sam_gcd_step`. Keeping the two gradients apart costs one extra
backward of the probe loss per forget micro-batch in the first pass, through the layers below the probe only
(counted as ``probe_backward`` in the run's cost); there is no extra forward. In absolute mode the train setting
``log_grad_stats: false`` skips the split (the paper's three passes; the per-term norms are then not logged).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from . import losses as L
from .base import Method
from .gradients import dot, global_norm, grads_of, local_parts, with_term_means
from .objectives import NPOTerm, RetainTerm, check_npo, check_retain
from .registry import ConfigError, choice, num, register_method
from .sam_npo import SAMNPO
from .sam import sam_gcd_step

RELEASED = {"npo_form": "logit", "gcd_scope": "per_tensor", "gcd_mode": "always", "probe_pooling": "last",
            "gamma_schedule": "off", "ref_logprobs": "per_pass", "sam_restore": "subtract"}


def gamma_adv(p: float, gamma_max: float, schedule: str = "exp") -> float:
    """γ_adv(p) = γ_max·exp(−5(1−p)²) (``exp``), γ_max (``constant``), 0 (``off``) (docs/methods.md, "The γ schedule")."""
    if schedule == "off":
        return 0.0
    if schedule == "constant":
        return float(gamma_max)
    if schedule == "exp":
        return float(gamma_max) * math.exp(-5.0 * (1.0 - p) ** 2)
    raise ValueError(f"gamma_schedule must be exp, constant or off, got {schedule!r}")


def relative_gamma(scale: float, gnorm_npo: float, gnorm_probe: float) -> float:
    """γ_t of ``gamma_mode: relative``: scale·‖∇L_NPO‖/‖∇L_probe‖ with scale = gamma_target·s(p), so that
    ‖γ_t·∇L_probe‖ = scale·‖∇L_NPO‖; 0 when the probe gradient vanishes (nothing to weight)."""
    return float(scale) * float(gnorm_npo) / float(gnorm_probe) if gnorm_probe > 0 else 0.0


@register_method("prism")
class PRISM(Method):

    @dataclasses.dataclass
    class Config(SAMNPO.Config):
        """SAM+NPO's keys (NPO's + rho, sam_restore; PRISM's retain term is required: gdr or klr), plus the
        probe-guided term (γ schedule), gradient-conflict decoupling and the probe pooling."""
        retain_loss: str = choice("gdr", ("gdr", "klr"))
        gamma_mode: str = choice("absolute", ("absolute", "relative"))
        gamma_max: float = num(0.05, ge=0)         # absolute mode (paper)
        gamma_target: float = num(1.0, ge=0)       # relative mode (our extension): ‖γ∇L_probe‖/‖∇L_NPO‖ at p = 1
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
            if self.gamma_mode == "relative":
                self.unused("gamma_max", "with gamma_mode: relative (set gamma_target)")
            else:
                self.unused("gamma_target", "with gamma_mode: absolute (set gamma_max, or gamma_mode: relative)")

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
        scale = self.cfg.gamma_target if self.cfg.gamma_mode == "relative" else self.cfg.gamma_max
        return self.cfg.gamma_schedule != "off" and scale > 0

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
            raise ConfigError("probe_dir", "PRISM with gamma_max > 0 (or gamma_target > 0) needs a trained probe "
                                           "(train_probe); pass probe_dir, or set gamma_schedule: off for the "
                                           "ablation")
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
        """Absolute mode: γ_adv(p). Relative mode: the schedule factor s(p)·gamma_target (γ_t needs the norms)."""
        p = ctx.progress(self.cfg.gamma_progress)
        if self.cfg.gamma_mode == "relative":
            return gamma_adv(p, self.cfg.gamma_target, self.cfg.gamma_schedule)
        return gamma_adv(p, self.cfg.gamma_max, self.cfg.gamma_schedule)

    def _probe_on(self, device: torch.device):
        """The probe lives on the device of its input (D14)."""
        if next(self.probe.parameters()).device != device:
            self.probe = self.probe.to(device)
        return self.probe

    def _probe_loss(self, ctx, mb, out):
        h = out.hidden_states[self.layer]
        z = L.pool_hidden(h, L.pool_mask(mb.labels, mb.attention_mask), self.pooling).float()
        logits_p = self._probe_on(z.device)(z)
        l_probe = L.probe_ce_loss(logits_p, 0, denom=ctx.forget_examples)
        p_retain = torch.softmax(logits_p.detach(), -1)[:, 0].sum() / ctx.forget_examples
        return l_probe, p_retain

    def _split_first_pass(self, ctx, scale: float, state: dict):
        """Pass 1 at θ with ∇L_NPO (in .grad) and ∇L_probe (in the spare buffer) kept apart; then γ_t is set and
        .grad ← ∇L_NPO + γ_t·∇L_probe = ∇ℓ_f(θ). ``state["gamma"]`` carries γ_t to the SAM pass."""
        c = self.cfg
        buf = ctx.buffer()
        torch._foreach_zero_(local_parts(buf))

        def split_fn(mb):
            out = ctx.forward(mb, hidden_states=True)
            l_npo = self.npo.loss(ctx, mb, out.logits)
            l_probe, p_retain = self._probe_loss(ctx, mb, out)
            return l_npo, l_probe, {"loss_npo": l_npo, "loss_probe": l_probe, "probe_p_retain": p_retain}

        t1 = ctx.accumulate_split(split_fn, ctx.forget_mbs, buf, "forget")
        g = grads_of(ctx.params)
        n_npo, n_probe = global_norm(g), global_norm(buf)
        gamma = relative_gamma(scale, n_npo, n_probe) if c.gamma_mode == "relative" else scale
        inner = dot(g, buf)   # ⟨∇L_NPO, ∇L_probe⟩, before .grad becomes the sum
        with torch.no_grad():
            if gamma:
                torch._foreach_add_(local_parts(g), local_parts(buf), alpha=gamma)
        state["gamma"] = gamma
        t1["loss_forget"] = t1["loss_npo"] + gamma * t1["loss_probe"]
        t1.update(gnorm_npo=n_npo, gnorm_probe=n_probe, gnorm_probe_weighted=gamma * n_probe,
                  probe_grad_ratio=gamma * n_probe / n_npo if n_npo > 0 else math.nan,
                  cos_npo_probe=inner / (n_npo * n_probe) if n_npo > 0 and n_probe > 0 else math.nan)
        return t1

    def step(self, ctx):
        c = self.cfg
        scale = self.gamma(ctx) if self.uses_probe else 0.0
        state = {"gamma": 0.0}

        def forget_fn(mb):   # the SAM pass at θ+δ (and pass 1 when the probe term is off)
            gamma = state["gamma"]
            out = ctx.forward(mb, hidden_states=gamma > 0)
            l_npo = self.npo.loss(ctx, mb, out.logits)
            terms = {"loss_npo": l_npo}
            loss = l_npo
            if gamma > 0:
                l_probe, p_retain = self._probe_loss(ctx, mb, out)
                loss = loss + gamma * l_probe
                terms.update(loss_probe=l_probe, probe_p_retain=p_retain)
            terms["loss_forget"] = loss
            return loss, terms

        def retain_fn(mb):
            v, terms = self.retain.loss(ctx, mb)
            return v, {**terms, "loss_retain": v}

        # the split costs one partial backward (see the module docstring): needed for the relative γ, and in
        # absolute mode only to log the per-term norms (train ``log_grad_stats: false`` skips it, paper cost)
        split = scale > 0 and (c.gamma_mode == "relative" or ctx.tcfg.log_grad_stats)
        if scale > 0 and not split:   # absolute γ without the split: the term is on but its share is not measured
            state["gamma"] = scale
        first = (lambda: self._split_first_pass(ctx, scale, state)) if split else None
        logs = sam_gcd_step(ctx, forget_fn, retain_fn, rho=c.rho, lambda_f=c.lambda_f, lambda_r=c.lambda_r,
                            gcd_scope=c.gcd_scope, gcd_mode=c.gcd_mode, gcd_eps=c.gcd_eps, restore=c.sam_restore,
                            first_pass=first)
        if scale == 0:   # no probe term: the forget gradient of pass 1 is ∇L_NPO, the probe's share is 0
            logs.update(gnorm_npo=logs["gnorm_forget"], probe_grad_ratio=0.0, gnorm_probe_weighted=0.0)
        elif not split:
            logs["probe_grad_ratio"] = math.nan
        logs["gamma"] = state["gamma"]
        logs["gamma_scale"] = scale
        return logs

    def run(self, trainer):
        return with_term_means(trainer.train())

    def info(self) -> dict:
        return {**self.npo.info(), **self._info, "gamma_mode": self.cfg.gamma_mode,
                "gamma_schedule": self.cfg.gamma_schedule,
                "gamma_progress": self.cfg.gamma_progress, "gcd_scope": self.cfg.gcd_scope}
