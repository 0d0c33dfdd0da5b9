"""Method base classes: what a method supplies to the one training loop (docs/architecture.md,
"The training loop")."""
from __future__ import annotations

from typing import Any

import torch

from .gradients import grad_stats, grads_of, local_parts


class Method:
    """One unlearning method. Subclasses define a nested ``Config`` dataclass and ``step``.

    Life cycle inside :class:`~.loop.Trainer`: ``prepare(setup)`` on θ₀ (reference caches, frozen copies,
    control vectors) → ``select_trainable(model)`` → per step ``step(ctx)`` leaves the final (unclipped) combined
    gradient in ``.grad`` and returns the terms to log → ``info()`` goes into run.json.
    """

    name: str = "?"
    Config: type
    supports_lora: bool = True
    supports_fsdp: bool = True    # sharded parameters (docs/methods.md, "Several processes"); ddp always works

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def lr(self) -> float:
        return float(self.cfg.lr)

    @property
    def uses_retain(self) -> bool:
        return False

    def lr_schedule(self, tcfg) -> str:
        return tcfg.lr_schedule

    def prepare(self, setup) -> None:
        pass

    def select_trainable(self, model: torch.nn.Module) -> None:
        """Default: every floating-point parameter (full fine-tuning); with LoRA, peft has already chosen."""
        if getattr(model, "peft_config", None):
            return
        for p in model.parameters():
            p.requires_grad_(p.is_floating_point())

    def step(self, ctx) -> dict[str, Any]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Resolved settings and setup facts for run.json."""
        return {}

    def run(self, trainer) -> dict[str, Any]:
        """Train (the default: the loop). Task Vector overrides this to add its weight arithmetic."""
        return trainer.train()


class LossMethod(Method):
    """Methods whose objective is λ_f·ℓ_f + λ_r·ℓ_r with one forward+backward per term (GA, GradDiff, NPO,
    SimNPO, RMU, fine-tuning). The step runs the forget phase over all micro-batches, then the retain phase
    (docs/methods.md, "The shared training loop"); with ``log_grad_stats`` the forget gradient is parked in the
    spare buffer so that ‖g_f‖, ‖g_r‖ and cos(g_f, g_r) can be logged."""

    lambda_f_key = "lambda_f"
    lambda_r_key = "lambda_r"

    @property
    def lambda_f(self) -> float:
        return float(getattr(self.cfg, self.lambda_f_key, 1.0))

    @property
    def lambda_r(self) -> float:
        return float(getattr(self.cfg, self.lambda_r_key, 0.0)) if self.uses_retain else 0.0

    def forget_loss(self, ctx, mb):
        """(unweighted loss normalised over the logical batch, terms to log)."""
        raise NotImplementedError

    def retain_loss(self, ctx, mb):
        raise NotImplementedError

    def step(self, ctx) -> dict[str, Any]:
        lf, lr_ = self.lambda_f, self.lambda_r

        def f_fn(mb):
            loss, terms = self.forget_loss(ctx, mb)
            return lf * loss, {**terms, "loss_forget": loss}

        def r_fn(mb):
            loss, terms = self.retain_loss(ctx, mb)
            return lr_ * loss, {**terms, "loss_retain": loss}

        logs = ctx.accumulate(f_fn, ctx.forget_mbs, "forget")
        total = lf * logs["loss_forget"]
        if self.uses_retain and ctx.retain_mbs and lr_ > 0:
            stats = ctx.tcfg.log_grad_stats
            if stats:
                buf = ctx.buffer()
                g = grads_of(ctx.params)
                torch._foreach_copy_(local_parts(buf), local_parts(g))
                ctx.zero_grad()
            logs.update(ctx.accumulate(r_fn, ctx.retain_mbs, "retain"))
            total += lr_ * logs["loss_retain"]
            if stats:
                g_r = grads_of(ctx.params)
                st = grad_stats(buf, g_r)
                logs["gnorm_f"] = st["gnorm_f"] / lf if lf > 0 else 0.0
                logs["gnorm_r"] = st["gnorm_r"] / lr_ if lr_ > 0 else 0.0
                logs["cos_fr"] = st["cos_fr"]
                torch._foreach_add_(local_parts(g_r), local_parts(buf))
        logs["loss"] = total
        return logs
