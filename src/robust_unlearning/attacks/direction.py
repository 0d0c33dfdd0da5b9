"""Representation-direction attacks (docs/evaluation.md, "Representation margin", "Latent perturbation", "Direction steering and ablation").

Acceptance direction at block L_m (default: the last block): z(x) = block output at the last prompt token of the
chat-templated prompt (generation prompt on); c_a = mean z over the fit half of D_a (retain questions, answered),
c_b = mean over the fit half of D_b (forget questions); e_a = (c_a − c_b)/‖c_a − c_b‖ (same seeded 50/50 split as
the margin metric). z is the residual stream the hooks modify (block output before the final norm), so the
vector is measured where it is added.

- ``steer``: add λ·‖c_a − c_b‖·e_a to block L_m's output at every position, prompt and generated (λ = 1 moves the
  forget centre onto the acceptance centre).
- ``ablate``: h ← h − (h·d̂)d̂ with d̂ = e_a on the output of the chosen blocks (default all), as in the
  orthogonalisation attack.
- ``diff_ablate``: directional ablation of what unlearning changed (docs/evaluation.md, direction): per block l,
  d_l = mean z_l(unlearned) − mean z_l(original) over the fit half of the forget prompts (last prompt token); every
  block's output is orthogonalised against its own d̂_l. ``prepare`` stores the original (base) model's per-block
  means; ``evaluate`` measures the attacked model's. λ scales the removed component (λ = 1: full ablation,
  λ = 0: the zero-strength control); a block where the two means coincide is left alone.
Metrics under the hook: ASR by the evaluation's judge (greedy), refusal rate, forget / retain MCQ (+ clean).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence, Union

import torch

from ..utils.io import atomic_write_bytes, atomic_write_json, read_json
from .common import (block_output_hook, capture_block_output, chat_prompt, config_from_artefact,
                     clean_vs_attacked, decoder_blocks, encode_plain, forget_qa_items, generate_texts, item_record,
                     load_for_attack, mcq_with_clean, model_device, pad_rows, resolve_layer, seeded_subset,
                     write_attack_json)
from .config import AttackConfig
from .registry import register_attack

VECTORS = "direction.safetensors"
INFO = "direction.json"


@torch.no_grad()
def last_token_block_output(model, tokenizer, questions: Sequence[str], layer: int, batch_size: int = 32
                            ) -> torch.Tensor:
    """Block ``layer`` output at the last prompt token, one row per question (batched, right padding)."""
    ids = [encode_plain(tokenizer, chat_prompt(tokenizer, q)) for q in questions]
    dev = model_device(model)
    feats = []
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        x, att = pad_rows(chunk, tokenizer.pad_token_id, dev)
        with capture_block_output(model, layer) as st:
            model(input_ids=x, attention_mask=att)
        last = torch.tensor([len(r) - 1 for r in chunk], device=dev)
        feats.append(st["h"][torch.arange(len(chunk), device=dev), last].float().cpu())
    return torch.cat(feats)


def acceptance_direction(model, tokenizer, d_a: Sequence[str], d_b: Sequence[str], layer: int, seed: int,
                         batch_size: int = 32) -> dict:
    from ..metrics.margin import split_half

    fa, _ = split_half(len(d_a), seed, "D_a")
    fb, _ = split_half(len(d_b), seed, "D_b")
    if not fa or not fb:
        raise ValueError("direction: need at least 2 prompts in each anchor set")
    c_a = last_token_block_output(model, tokenizer, [d_a[i] for i in fa], layer, batch_size).double().mean(0)
    c_b = last_token_block_output(model, tokenizer, [d_b[i] for i in fb], layer, batch_size).double().mean(0)
    norm = float((c_a - c_b).norm())
    if norm == 0.0:
        raise ValueError("direction: acceptance and refusal centres coincide")
    return {"c_a": c_a.float(), "c_b": c_b.float(), "e_a": ((c_a - c_b) / norm).float(), "norm": norm,
            "n_fit_a": len(fa), "n_fit_b": len(fb)}


def parse_layers(spec: int | str, n_blocks: int | None) -> list[int]:
    """"all" | "last" | int | "i,j,k" → block indices (negative count from the end); n_blocks None: syntax only."""
    if isinstance(spec, int):
        idx = [spec]
    elif spec in ("all", "last"):
        if n_blocks is None:
            return []
        return list(range(n_blocks)) if spec == "all" else [n_blocks - 1]
    else:
        try:
            idx = [int(x) for x in str(spec).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"expected 'all', 'last', an index or comma-separated indices, got {spec!r}") from None
        if not idx:
            raise ValueError("no layer given")
    if n_blocks is None:
        return idx
    out = []
    for i in idx:
        j = i if i >= 0 else n_blocks + i
        if not 0 <= j < n_blocks:
            raise ValueError(f"layer {i} out of range for {n_blocks} blocks")
        out.append(j)
    return out


def forget_block_means(model, tokenizer, forget_prompts: Sequence[str], seed: int, batch_size: int = 32
                       ) -> torch.Tensor:
    """(n_blocks, d): every block's output at the last prompt token, averaged over the fit half of the forget
    prompts (the same seeded split as the acceptance direction)."""
    from ..metrics.margin import split_half

    fit, _ = split_half(len(forget_prompts), seed, "D_b")
    qs = [forget_prompts[i] for i in fit]
    if not qs:
        raise ValueError("direction: diff_ablate needs at least 2 forget prompts")
    return torch.stack([last_token_block_output(model, tokenizer, qs, l, batch_size).double().mean(0).float()
                        for l in range(len(decoder_blocks(model)))])


def diff_directions(attacked: torch.Tensor, original: torch.Tensor, rel_tol: float = 1e-6
                    ) -> tuple[dict[int, torch.Tensor], list[float]]:
    """Unit d̂_l per block from the mean difference; blocks whose means coincide (‖d_l‖ ≤ rel_tol·‖original_l‖) are
    skipped, so the original model attacked with its own means is left unchanged."""
    if attacked.shape != original.shape:
        raise ValueError(f"direction: per-block means of shape {tuple(attacked.shape)} vs {tuple(original.shape)} "
                         "(was the artefact fitted on another architecture?)")
    out, norms = {}, []
    for l in range(attacked.shape[0]):
        d = (attacked[l] - original[l]).double()
        n = float(d.norm())
        norms.append(n)
        if n > rel_tol * max(float(original[l].norm()), 1e-12):
            out[l] = (d / n).float()
    return out, norms


@contextlib.contextmanager
def direction_hooks(model, mode: str, e_a: torch.Tensor, scale: float, layer: int, ablate_layers,
                    per_layer: dict[int, torch.Tensor] | None = None, lam: float = 1.0):
    """steer: h + scale·e_a at ``layer``; ablate: h − (h·d̂)d̂ at each of ``ablate_layers``; diff_ablate:
    h − λ(h·d̂_l)d̂_l at every block l of ``per_layer``."""
    dev = model_device(model)
    with contextlib.ExitStack() as stack:
        if mode == "diff_ablate":
            for l, d in (per_layer or {}).items():
                dl = d.to(dev)

                def proj(h, dl=dl):
                    dd = dl.to(h.dtype)
                    return h - lam * (h @ dd)[..., None] * dd

                stack.enter_context(block_output_hook(model, l, proj))
        elif mode == "steer":
            v = (scale * e_a).to(dev)
            stack.enter_context(block_output_hook(model, layer, lambda h: h + v.to(h.dtype)))
        else:
            d = (e_a / e_a.norm()).to(dev)

            def ablate(h):
                dd = d.to(h.dtype)
                return h - (h @ dd)[..., None] * dd

            for l in ablate_layers:
                stack.enter_context(block_output_hook(model, l, ablate))
        yield


@register_attack("direction")
class Direction:
    kind = "input"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "direction"
        mode: Literal["steer", "ablate", "diff_ablate"] = "steer"
        lam: float = 1.0
        layer: Optional[int] = None                 # L_m as a block index; None = last block
        # ablate mode: "all", "last", one block index, or comma-separated indices "5,6,7" (a string, because a
        # list in the config is a grid axis)
        ablate_layers: Union[int, str] = "all"
        anchors: Literal["mcq", "knowmem"] = "mcq"
        source: Literal["mcq", "knowmem"] = "mcq"
        eval_items: Optional[int] = None
        max_new_tokens: int = 32
        batch_size: int = 32

        def check(self) -> None:
            self.require(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
            self.require(self.batch_size >= 1, "batch_size", "must be ≥ 1")
            self.require(self.eval_items is None or self.eval_items >= 1, "eval_items", "must be ≥ 1 or null")
            try:
                parse_layers(self.ablate_layers, None)
            except ValueError as exc:
                self.fail("ablate_layers", str(exc))

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        from safetensors.torch import save

        from ..metrics.margin import anchor_prompts

        started = time.time()
        cfg = cls.Config.from_dict(params)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model, tok = load_for_attack(model_dir, device)
        layer = resolve_layer(model, cfg.layer)
        d_a, d_b = anchor_prompts(bench, cfg.anchors)
        res = cls.fit(model, tok, d_a, d_b, layer, seed, cfg.batch_size)
        tensors = {k: res[k].contiguous() for k in ("c_a", "c_b", "e_a")}
        if cfg.mode == "diff_ablate":  # the original model's per-block means on the forget prompts
            tensors["base_means"] = forget_block_means(model, tok, d_b, seed, cfg.batch_size)
        atomic_write_bytes(out_dir / VECTORS, save(tensors))
        info = {"layer": layer, "norm": res["norm"], "n_fit_a": res["n_fit_a"], "n_fit_b": res["n_fit_b"]}
        atomic_write_json(out_dir / INFO, info)
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started, result=info)

    fit = staticmethod(acceptance_direction)

    @classmethod
    def evaluate(cls, model, tokenizer, bench, artefact_dir, eval_cfg: dict | None, seed: int, judge=None):
        from safetensors.torch import load_file

        from ..metrics.margin import anchor_prompts

        cfg, _ = config_from_artefact(cls, artefact_dir)
        vec = load_file(str(Path(artefact_dir) / VECTORS))
        info = read_json(Path(artefact_dir) / INFO)
        layer = int(info["layer"])
        ablate = parse_layers(cfg.ablate_layers, len(decoder_blocks(model)))
        per_layer, diff_norms = None, None
        if cfg.mode == "diff_ablate":
            _, d_b = anchor_prompts(bench, cfg.anchors)
            per_layer, diff_norms = diff_directions(forget_block_means(model, tokenizer, d_b, seed, cfg.batch_size),
                                                    vec["base_means"])

        def hooks():
            return direction_hooks(model, cfg.mode, vec["e_a"], cfg.lam * info["norm"], layer, ablate,
                                   per_layer=per_layer, lam=cfg.lam)

        items = forget_qa_items(bench, cfg.source)
        if cfg.eval_items:
            items = seeded_subset(items, cfg.eval_items, seed, "direction_eval")
        prompts = [chat_prompt(tokenizer, it["question"]) for it in items]
        with hooks():
            outs = generate_texts(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.batch_size)
        outs_clean = generate_texts(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                    batch_size=cfg.batch_size)
        metrics, succ, refu, raw, succ_clean = clean_vs_attacked(judge, outs, outs_clean, items)
        metrics.update({"layer": layer, "direction_norm": info["norm"], "lam": cfg.lam})
        if cfg.mode == "ablate":
            metrics["n_ablated_layers"] = len(ablate)
        if diff_norms is not None:
            metrics.update({"n_ablated_layers": len(per_layer), "diff_norm_max": max(diff_norms, default=0.0)})
        # MCQ through the evaluation's own scorer and rows (metrics.mcq), under the hooks and clean
        metrics.update(mcq_with_clean(model, tokenizer, bench, eval_cfg, ("forget", "retain"), hooks=hooks))
        records = [item_record(it["item_id"], p, o, s, judge_raw=w,
                               meta={"mode": cfg.mode, "lam": cfg.lam, "clean_output": oc, "clean_success": sc})
                   for it, p, o, s, w, oc, sc in zip(items, prompts, outs, succ, raw, outs_clean, succ_clean)]
        return metrics, records
