"""Model presets built from config (seeded init) for the embedded default."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    # ~0.9M params at vocab 3000
    "tiny-llama": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       intermediate_size=512),
    # ~5M params
    "small-llama": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                        intermediate_size=1024),
    # for unit tests only
    "micro-llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=64),
}


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
