"""Plain CE descent on a set of examples: the ``finetune`` objective (relearning attack, Task Vector's θ_ft).

Uses the same loop as unlearning (seeded order, accumulation, clipping 1.0, AdamW, checkpoint/resume), with a
cosine schedule by default: fine-tuning, Task Vector and relearning use cosine, no warmup (docs/methods.md,
"The shared training loop").
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from . import losses as L
from .base import LossMethod
from .registry import MethodConfig, num, register_method


@register_method("finetune")
class FineTune(LossMethod):

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-5, gt=0)

    def forget_loss(self, ctx, mb):
        v = L.token_ce(ctx.forward(mb).logits, mb.labels, denom=ctx.forget_tokens)
        return v, {"loss_ce": v}


def finetune(model, tokenizer, examples: Sequence[dict], steps: int, lr: float, batch_size: int, seed: int,
             schedule: str = "cosine", checkpoint_dir=None, log_path=None, train_cfg: dict | None = None,
             return_model: bool = False):
    """Fine-tune ``model`` in place on ``examples`` for ``steps`` optimizer steps (CE descent).

    The model stays on its device and dtype. ``train_cfg`` may add loop keys (grad_accum, max_len, lora, ...).
    Returns {"status", "steps", "final_loss", "losses", "cost", "log"}; raises Preempted on SIGTERM/SIGINT after
    saving resumable state in ``checkpoint_dir`` (rerun with the same arguments to resume). ``return_model``:
    (stats, the trained model to save) — ``model`` itself, except under FSDP (docs/methods.md, "Several
    processes"), where it is a whole copy gathered on process 0 (None on the others).
    """
    from .loop import Trainer, TrainConfig

    tc = {"steps": int(steps), "batch_size": int(batch_size), "lr_schedule": schedule, "progress": False,
          **(train_cfg or {})}
    tcfg = TrainConfig.from_dict(tc)
    method = FineTune(FineTune.Config.from_dict({"lr": float(lr)}))
    trainer = Trainer(model, tokenizer, method, tcfg, examples, [], seed, device=None,
                      checkpoint_dir=checkpoint_dir, log_path=log_path)
    res = trainer.train()
    final = trainer.finish()
    trainer.clear_checkpoint()
    losses = [r.get("loss") for r in res["log"]]
    stats = {"status": res["status"], "steps": res["steps_done"], "final_loss": losses[-1] if losses else None,
             "losses": losses, "cost": res["cost"], "log": res["log"], "divergence": res["divergence"]}
    return (stats, final) if return_model else stats
