"""A new unlearning method in one file: scaled gradient ascent, L = −scale · CE(B_f).

The whole contract (docs/architecture.md, "Adding a method"): a class registered under a name, a nested
``Config`` dataclass whose fields are the method's hyperparameters (unknown keys are refused), and the forget
loss of one micro-batch normalised over the logical batch. The loop does batching, accumulation, clipping,
AdamW, logging, cost metering and checkpoint/resume.

Out of tree, name the file: ``ru --plugin tests/unit/plugins/toy_method.py unlearn --method toy_ascent ...`` or
``RU_PLUGINS=tests/unit/plugins/toy_method.py snakemake ...``. In tree, the same file goes to
``src/robust_unlearning/methods/`` and its module name into ``_METHOD_MODULES`` in ``methods/registry.py``.
"""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from robust_unlearning.methods.base import LossMethod
from robust_unlearning.methods.registry import ConfigBase, num, register_method


@register_method("toy_ascent")            # the name used in --method and in the config's unlearning.methods
class ToyAscent(LossMethod):
    """LossMethod runs the forget phase (and a retain phase when ``uses_retain``) and logs the terms."""

    @dataclasses.dataclass
    class Config(ConfigBase):
        """Hyperparameters with defaults and ranges; a grid in the config lists values per key."""
        lr: float = num(1e-5, gt=0)
        scale: float = num(1.0, gt=0)

    def forget_loss(self, ctx, mb):
        logits = ctx.forward(mb).logits[:, :-1].float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mb.labels[:, 1:].reshape(-1),
                             ignore_index=-100, reduction="sum") / ctx.forget_tokens
        loss = -self.cfg.scale * ce
        return loss, {"ce_forget": ce.detach()}
