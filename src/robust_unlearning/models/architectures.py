"""Model presets built from config (seeded init) for the embedded default."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .presets import PRESETS  # noqa: F401  (re-export; the shapes are shared with the resource estimate)


def build_llama(tokenizer, preset: str = "tiny-llama", seed: int = 0, max_position_embeddings: int = 512) -> LlamaForCausalLM:
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **PRESETS[preset])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
