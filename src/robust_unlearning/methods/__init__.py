"""Unlearning methods (docs/methods.md): one loop, one small module per method behind a registry, the probe."""
from .registry import METHODS, ConfigError, get_method, register_method
from .loop import DivergenceError, Preempted, TrainConfig, Trainer
from .runner import build_method, run_unlearning
from .finetuning import finetune
from .probe import load_probe, train_probe
from .registry import _ensure_loaded as _load

_load()

__all__ = ["METHODS", "ConfigError", "DivergenceError", "Preempted", "TrainConfig", "Trainer", "build_method",
           "finetune", "get_method", "load_probe", "register_method", "run_unlearning", "train_probe"]
