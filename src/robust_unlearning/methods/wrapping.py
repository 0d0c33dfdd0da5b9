"""LoRA and gradient checkpointing around the policy model: applied after ``prepare`` and undone by ``finish``."""
from __future__ import annotations

import torch

from .registry import ConfigError
from .train_config import TrainConfig


def wrap_model(model: torch.nn.Module, tcfg: TrainConfig, method) -> torch.nn.Module:
    """Add LoRA adapters (``tcfg.lora``) and gradient checkpointing; returns the model in train mode."""
    if tcfg.lora is not None:
        if not method.supports_lora:
            raise ConfigError("lora", f"method {method.name} selects its own parameters; LoRA unsupported")
        from peft import LoraConfig as PeftLora, get_peft_model
        lc = tcfg.lora_cfg
        model = get_peft_model(model, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                               target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
        model.enable_input_require_grads()
    if tcfg.gradient_checkpointing:
        if hasattr(model, "config"):
            model.config.use_cache = False
        if hasattr(model, "activation_checkpointing_enable"):   # transformers ≥ 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def unwrap_model(model: torch.nn.Module, tcfg: TrainConfig) -> torch.nn.Module:
    """Merge LoRA into the weights, switch gradient checkpointing off; returns the plain model in eval mode."""
    if tcfg.lora is not None:
        model = model.merge_and_unload()
    if tcfg.gradient_checkpointing:
        disable = getattr(model, "activation_checkpointing_disable", None) or \
            getattr(model, "gradient_checkpointing_disable", None)
        if disable is not None:
            disable()
        if hasattr(model, "config"):
            model.config.use_cache = True
    model.eval()
    return model
