"""The loop's settings (``train_cfg``), shared by every method, and the learning-rate schedule they select."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from .registry import ConfigBase, ConfigError, choice, num


@dataclasses.dataclass
class LoraConfig(ConfigBase):
    r: int = num(8, gt=0)
    alpha: float = num(16.0, gt=0)
    dropout: float = num(0.0, ge=0, lt=1)
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    """Loop settings shared by every method (``train_cfg``). Exactly one of ``steps`` / ``epochs``."""
    steps: int | None = num(None, gt=0)
    epochs: int | None = num(None, gt=0)
    batch_size: int = num(4, gt=0)            # per-device micro-batch
    grad_accum: int = num(1, gt=0)            # micro-batches per optimizer step
    max_len: int | None = num(None, gt=1)     # truncate examples (None: as built)
    dtype: str | None = choice(None, ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"))  # None: keep
    grad_clip: float | None = num(1.0, gt=0)
    retain_sampling: str = choice("random", ("random", "paired_modulo"))
    on_divergence: str = choice("fail", ("fail", "record"))
    checkpoint_every: int | None = num(None, gt=0)
    save_steps: list[int] | None = None       # extra model snapshots after these steps (docs/methods.md)
    keep_checkpoint: bool = False
    gradient_checkpointing: bool = False
    lora: dict | None = None
    progress: bool = True
    lr_schedule: str = choice("constant", ("constant", "cosine", "linear"))
    warmup_steps: int = num(0, ge=0)
    adam_beta1: float = num(0.9, ge=0, lt=1)
    adam_beta2: float = num(0.999, ge=0, lt=1)
    adam_eps: float = num(1e-8, gt=0)
    weight_decay: float = num(0.0, ge=0)
    log_grad_stats: bool = True               # ‖g_f‖, ‖g_r‖, cos: one extra gradient-sized buffer for 2-phase methods
    # several processes for one model (docs/methods.md, "Several processes"): None/1 = one process; N > 1 = the
    # job relaunches itself under `accelerate launch --num_processes N` (one GPU each), the same global batch
    num_processes: int | None = num(None, gt=0)
    distributed: str | None = choice(None, ("ddp", "fsdp"))   # None: ddp (replicated), or $RU_DISTRIBUTED

    def check(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("steps", "set exactly one of steps / epochs")
        if self.save_steps is not None and any(x <= 0 for x in self.save_steps):
            raise ConfigError("save_steps", "steps must be > 0")
        if self.lora is not None:
            try:
                self.lora_cfg = LoraConfig.from_dict(self.lora)
            except ConfigError as exc:
                raise ConfigError(f"lora.{exc.key}", str(exc).split(": ", 1)[-1]) from None

    def resolved(self) -> dict:
        return {k: v for k, v in self.to_dict().items()}


def effective_train_config(tcfg: TrainConfig, method_cfg) -> TrainConfig:
    """``tcfg`` with the method's own loop settings (``MethodConfig.loop_overrides``: steps / epochs, grad_clip,
    adam_eps) in place of the shared ones; ``tcfg`` itself when the method sets none (or has no such keys, as a
    plugin's config may). The result records what was replaced in ``overrides``."""
    get = getattr(method_cfg, "loop_overrides", None)
    changes = dict(get()) if callable(get) else {}
    if not changes:
        return tcfg
    if "steps" in changes:            # the method's length replaces the loop's, whichever way that was given
        changes["epochs"] = None
    elif "epochs" in changes:
        changes["steps"] = None
    new = TrainConfig.from_dict({**tcfg.to_dict(), **changes})
    new.overrides = method_cfg.loop_overrides()   # a plain attribute, not a config key
    return new


def lr_lambda(schedule: str, total: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier of optimizer step ``i``: linear warm-up over ``warmup`` steps, then constant/cosine/linear."""
    def f(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        prog = (i - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(prog, 1.0)))
        return max(0.0, 1.0 - prog)  # linear
    return f
