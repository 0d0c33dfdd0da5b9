"""Task Vector (docs/methods.md, "Task Vector"): θ_ft = fine-tune(θ₀, D_f); τ = θ_ft − θ₀; θ_u = θ₀ − α·τ.

The fine-tune is the ``finetune`` objective in the same loop (cosine schedule by default, resumable); the
arithmetic runs in fp32 over floating-point parameters and is cast back to the model dtype.
"""
from __future__ import annotations

import dataclasses

import torch

from . import losses as L
from .base import LossMethod
from .gradients import with_term_means
from .registry import MethodConfig, choice, num, register_method


@register_method("task_vector")
class TaskVector(LossMethod):
    supports_lora = False
    supports_fsdp = False   # θ₀ − α·τ is computed on whole tensors (with several processes: distributed: ddp)

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-5, gt=0)
        alpha: float = num(5.0, gt=0)            # MUSE scripts: 5.0 (argparse default 1.0)
        ft_schedule: str = choice("cosine", ("cosine", "constant", "linear"))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.theta0: dict[str, torch.Tensor] | None = None
        self._info: dict = {}

    def lr_schedule(self, tcfg) -> str:
        return self.cfg.ft_schedule

    def prepare(self, setup) -> None:
        # exact copy of θ₀ (model dtype, on CPU): the arithmetic upcasts per tensor
        self.theta0 = {n: p.detach().to("cpu", copy=True) for n, p in setup.model.named_parameters()
                       if p.is_floating_point()}

    def forget_loss(self, ctx, mb):
        v = L.token_ce(ctx.forward(mb).logits, mb.labels, denom=ctx.forget_tokens)
        return v, {"loss_ce": v}

    def run(self, trainer):
        res = with_term_means(trainer.train())   # run-level term metrics (0: no probe, SAM or GCD term)
        if res["status"] != "ok":
            return res
        alpha = float(self.cfg.alpha)
        tau_sq = 0.0
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                if n not in self.theta0:
                    continue
                t0 = self.theta0[n].to(p.device, torch.float32)
                tau = p.detach().float() - t0
                tau_sq += float((tau * tau).sum())
                p.copy_((t0 - alpha * tau).to(p.dtype))
        self.theta0 = None
        self._info = {"alpha": alpha, "tau_norm": tau_sq ** 0.5, "ft_steps": res["steps_done"],
                      "ft_final_loss": res["log"][-1].get("loss") if res["log"] else None}
        res["method_info"] = {**res.get("method_info", {}), **self._info}
        return res

    def info(self) -> dict:
        return self._info
