"""Quantization attack (docs/evaluation.md, "Quantisation"; Zhang et al. 2024): unlearning updates smaller than a quantisation
step vanish when the weights are rounded, so the quantised unlearned model falls back towards the target.

CPU / synthetic path ("fake"): round-to-nearest on every ``nn.Linear`` weight except the LM head (and anything
sharing storage with the input embeddings), dequantised back to the weights' precision:
- int8: symmetric per output channel, scale_o = max_i |W_oi| / 127, W' = scale_o · clamp(round(W/scale_o), −127, 127);
- int4: symmetric per group of ``group_size`` (32) consecutive input columns, scale = max|W_group| / 7.
Every weight moves by at most scale/2. The bitsandbytes path (reference: 4-bit FP4 block 64 / LLM.int8) needs
CUDA; the quantised model is dequantised and saved as an ordinary folder (in model.dtype) so evaluation needs no
bitsandbytes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from .common import load_for_attack, write_attack_json
from .config import AttackConfig
from .registry import register_attack


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest; returns (dequantised weight, scales of shape [out, n_groups]).

    group_size None → one group per output row (per-channel). A last partial group gets its own scale.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-d weight, got shape {tuple(weight.shape)}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    out_f, in_f = w.shape
    g = in_f if not group_size else int(group_size)
    n_groups = (in_f + g - 1) // g
    pad = n_groups * g - in_f
    wp = torch.nn.functional.pad(w, (0, pad)) if pad else w
    wg = wp.reshape(out_f, n_groups, g)
    scale = wg.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(wg / safe), -qmax, qmax)
    deq = (q * scale).reshape(out_f, n_groups * g)[:, :in_f]
    return deq.to(weight.dtype), scale.squeeze(-1)


def quantizable_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """All Linear modules except the LM head and any weight tied to the input embeddings."""
    emb = model.get_input_embeddings()
    emb_ptr = emb.weight.data_ptr() if emb is not None else None
    head = model.get_output_embeddings()
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is head or name.endswith("lm_head"):
            continue
        if emb_ptr is not None and mod.weight.data_ptr() == emb_ptr:
            continue
        out.append((name, mod))
    return out


def fake_quantize_model(model, bits: int, group_size: int | None) -> dict:
    """In place; returns per-run statistics (modules, max |ΔW| / max scale)."""
    n, worst = 0, 0.0
    with torch.no_grad():
        for _name, mod in quantizable_linears(model):
            deq, scale = fake_quantize(mod.weight, bits, group_size)
            worst = max(worst, float((deq - mod.weight).abs().max()) / max(float(scale.max()), 1e-30))
            mod.weight.copy_(deq)
            n += 1
    return {"n_modules": n, "max_abs_change_over_max_scale": worst}


@register_attack("quantize")
class Quantize:
    kind = "model"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "quantize"
        bits: int = 8
        group_size: int = 32  # int4 only; int8 is per output channel
        backend: Literal["fake", "bitsandbytes"] = "fake"

        def check(self) -> None:
            self.require(self.bits in (4, 8), "bits", f"must be 4 or 8, got {self.bits}")
            self.require(self.group_size >= 1, "group_size", f"must be ≥ 1, got {self.group_size}")

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        from ..models.io import save_model

        started = time.time()
        cfg = cls.Config.from_dict(params)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.backend == "fake":
            # CPU whatever the job's device: rounding is then identical on every machine; precision: model.dtype
            model, tok = load_for_attack(model_dir, "cpu")
            stats = fake_quantize_model(model, cfg.bits, cfg.group_size if cfg.bits == 4 else None)
            scheme = "int8 symmetric per output channel" if cfg.bits == 8 else \
                f"int4 symmetric, group {cfg.group_size} along the input dimension"
        else:
            model, tok, stats = _bitsandbytes_roundtrip(model_dir, cfg.bits)
            scheme = "bitsandbytes LLM.int8" if cfg.bits == 8 else "bitsandbytes 4-bit (FP4, library defaults)"
        save_model(model, tok, out_dir / "model")
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started,
                                 result={"scheme": scheme, **stats})


def _bitsandbytes_roundtrip(model_dir, bits: int):
    """Load with bitsandbytes (CUDA only), then dequantise to an ordinary model (lm_head stays unquantised)."""
    if not torch.cuda.is_available():
        raise RuntimeError("quantize.backend: 'bitsandbytes' needs a CUDA device; use backend 'fake' on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("quantize.backend: 'bitsandbytes' is not installed; install it or use backend "
                           "'fake'") from exc
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ..models.io import check_model_dir, load_tokenizer

    path = check_model_dir(model_dir)
    qcfg = BitsAndBytesConfig(load_in_4bit=True) if bits == 4 else BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=qcfg, dtype=torch.bfloat16,
                                                 local_files_only=True, device_map={"": 0})
    from ..models.io import resolve_dtype
    from .common import load_dtype

    model = model.dequantize().to(resolve_dtype(load_dtype())).cpu()  # saved in the job's precision
    return model, load_tokenizer(path), {"n_modules": None}
