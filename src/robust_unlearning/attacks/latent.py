"""Latent PGD (docs/evaluation.md, "Latent perturbation"): a perturbation δ ∈ ℝ^{T×d} added to the output of block L at the prompt
positions, inside per-position balls ‖δ_t‖₂ ≤ ε·‖h_t‖₂ (h = the clean block output), maximising
Σ log p(answer tokens | prompt, h + δ) with teacher forcing.

``steps`` (32) steps of per-position normalised-gradient ascent with step 2.5·ε·‖h_t‖/steps, random start inside
the ball, projection after every step; then greedy decoding with δ fixed (added to the prompt positions of the
prefill forward only; generated positions are left alone). ε = 0 gives δ ≡ 0, i.e. exactly the clean model.
All items are optimised together in one right-padded batch per ``batch_size`` items (no per-item loop).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence

import torch

from ..utils.repro import derive_seed
from .common import (block_output_hook, capture_block_output, chat_prompt, config_from_artefact, encode_plain,
                     forget_qa_items, generate_texts, item_record, clean_vs_attacked, model_device,
                     resolve_layer, seeded_subset, target_nll, write_attack_json)
from .config import AttackConfig
from .registry import register_attack


class TeacherRows:
    """prompt + target rows, right-padded, with target positions and a prompt-position mask."""

    def __init__(self, prompts: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int, device):
        W = max(len(p) + len(t) for p, t in zip(prompts, targets))
        T = max(len(t) for t in targets)
        R = len(prompts)
        self.ids = torch.full((R, W), pad_id, dtype=torch.long)
        self.att = torch.zeros((R, W), dtype=torch.long)
        self.prompt_mask = torch.zeros((R, W), dtype=torch.bool)
        self.tgt_pos = torch.zeros((R, T), dtype=torch.long)
        self.tgt_ids = torch.zeros((R, T), dtype=torch.long)
        self.tgt_mask = torch.zeros((R, T), dtype=torch.bool)
        self.prompt_len = [len(p) for p in prompts]
        for r, (p, t) in enumerate(zip(prompts, targets)):
            s = list(p) + list(t)
            self.ids[r, :len(s)] = torch.tensor(s)
            self.att[r, :len(s)] = 1
            self.prompt_mask[r, :len(p)] = True
            self.tgt_pos[r, :len(t)] = len(p) - 1 + torch.arange(len(t))
            self.tgt_ids[r, :len(t)] = torch.tensor(t)
            self.tgt_mask[r, :len(t)] = True
        for name in ("ids", "att", "prompt_mask", "tgt_pos", "tgt_ids", "tgt_mask"):
            setattr(self, name, getattr(self, name).to(device))

    def nll(self, model) -> torch.Tensor:
        return target_nll(model, self.att, self.tgt_pos, self.tgt_ids, self.tgt_mask, input_ids=self.ids)


def _project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(radius[..., None] / norm.clamp_min(1e-12), max=1.0)


def pgd_hidden(model, rows: TeacherRows, layer: int, eps: float, steps: int, random_start: bool,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (δ (R, W, d), clean per-row NLL, attacked per-row NLL). δ is zero outside prompt positions."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad(), capture_block_output(model, layer) as store:
            clean = rows.nll(model)
        h = store["h"].detach()
        radius = eps * h.norm(dim=-1) * rows.prompt_mask            # (R, W), 0 outside the prompt
        step = 2.5 * radius / steps
        if random_start and eps > 0:
            d = torch.randn(h.shape, generator=gen).to(h.device, h.dtype)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            u = torch.rand(h.shape[:2], generator=gen).to(h.device, h.dtype)
            delta = d * (u * radius)[..., None]
        else:
            delta = torch.zeros_like(h)
        for _ in range(steps if eps > 0 else 0):
            delta.requires_grad_(True)
            with block_output_hook(model, layer, lambda x: x + delta):
                loss = rows.nll(model).sum()
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = _project(delta - step[..., None] * g, radius)   # descend the NLL = ascend log p
        delta = delta.detach()
        with torch.no_grad(), block_output_hook(model, layer, lambda x: x + delta):
            attacked = rows.nll(model)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return delta, clean, attacked


def generate_with_prompt_delta(model, tokenizer, prompts: Sequence[list[int]], deltas: Sequence[torch.Tensor],
                               layer: int, max_new_tokens: int) -> list[str]:
    """Greedy decoding with δ_i added to the prompt positions of block ``layer`` in the prefill forward.

    Prompts of equal length are generated together (no padding, so δ lines up with the prompt tokens)."""
    out: list[str | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for T, idx in groups.items():
        d = torch.stack([deltas[i][:T] for i in idx])

        def fn(h, d=d, T=T):
            if h.shape[0] == d.shape[0] and h.shape[1] >= T:
                h = h.clone()
                h[:, :T] = h[:, :T] + d.to(h.dtype)
            return h

        with block_output_hook(model, layer, fn):
            texts = generate_texts(model, tokenizer, [prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                   batch_size=len(idx))
        for i, t in zip(idx, texts):
            out[i] = t
    return [o or "" for o in out]


@register_attack("latent")
class Latent:
    kind = "input"

    @dataclass
    class Config(AttackConfig):
        attack_name: ClassVar[str] = "latent"
        eps: float = 0.1
        steps: int = 32
        layer: Optional[int] = None       # block index; None = the middle block; negative counts from the end
        random_start: bool = True
        source: Literal["mcq", "knowmem"] = "mcq"
        eval_items: Optional[int] = None
        batch_size: int = 16
        max_new_tokens: int = 32

        def check(self) -> None:
            self.require(self.eps >= 0, "eps", f"must be ≥ 0, got {self.eps}")
            for key in ("steps", "batch_size", "max_new_tokens"):
                self.require(getattr(self, key) >= 1, key, f"must be ≥ 1, got {getattr(self, key)}")
            self.require(self.eval_items is None or self.eval_items >= 1, "eval_items", "must be ≥ 1 or null")

    @classmethod
    def prepare(cls, model_dir, bench, params: dict, out_dir, seed: int, device: str = "auto") -> dict:
        """PGD is per model and item, so it runs at evaluation; the artefact is the validated settings."""
        started = time.time()
        cfg = cls.Config.from_dict(params)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return write_attack_json(out_dir, cls, cfg, seed, model_dir, bench, started)

    @classmethod
    def attack_items(cls, model, tokenizer, items, cfg, seed: int):
        """PGD + greedy decoding for items; returns per-item dicts (prompt ids, δ, NLLs, outputs)."""
        layer = resolve_layer(model, cfg.layer, default="middle")
        dev = model_device(model)
        res = []
        for s in range(0, len(items), cfg.batch_size):
            chunk = items[s:s + cfg.batch_size]
            prompts = [encode_plain(tokenizer, chat_prompt(tokenizer, it["question"])) for it in chunk]
            targets = [encode_plain(tokenizer, it["answer"]) for it in chunk]
            rows = TeacherRows(prompts, targets, tokenizer.pad_token_id, dev)
            gen = torch.Generator().manual_seed(derive_seed(seed, "latent", s))
            delta, clean, att = pgd_hidden(model, rows, layer, cfg.eps, cfg.steps, cfg.random_start, gen)
            for r, it in enumerate(chunk):
                res.append({"item": it, "prompt": prompts[r], "target": targets[r], "delta": delta[r],
                            "nll_clean": float(clean[r]), "nll": float(att[r])})
        outs = generate_with_prompt_delta(model, tokenizer, [r["prompt"] for r in res], [r["delta"] for r in res],
                                          layer, cfg.max_new_tokens)
        outs_clean = generate_texts(model, tokenizer, [r["prompt"] for r in res], max_new_tokens=cfg.max_new_tokens)
        for r, o, oc in zip(res, outs, outs_clean):
            r["output"], r["output_clean"] = o, oc
        return res, layer

    @classmethod
    def evaluate(cls, model, tokenizer, bench, artefact_dir, eval_cfg: dict | None, seed: int, judge=None):
        cfg, _ = config_from_artefact(cls, artefact_dir)
        items = forget_qa_items(bench, cfg.source)
        if cfg.eval_items:
            items = seeded_subset(items, cfg.eval_items, seed, "latent_eval")
        res, layer = cls.attack_items(model, tokenizer, items, cfg, seed)
        metrics, succ, refu, raw, succ_clean = clean_vs_attacked(
            judge, [r["output"] for r in res], [r["output_clean"] for r in res], [r["item"] for r in res])
        n = max(1, len(res))
        metrics.update({"forget_qa_logprob": -sum(r["nll"] for r in res) / n,
                        "forget_qa_logprob_clean": -sum(r["nll_clean"] for r in res) / n, "eps": cfg.eps,
                        "layer": layer})
        metrics["forget_qa_logprob_gain"] = metrics["forget_qa_logprob"] - metrics["forget_qa_logprob_clean"]
        records = [item_record(r["item"]["item_id"], tokenizer.decode(r["prompt"]), r["output"], s,
                               judge_raw=w,
                               meta={"eps": cfg.eps, "layer": layer, "clean_output": r["output_clean"],
                                     "clean_success": sc, "answer_nll": r["nll"], "answer_nll_clean": r["nll_clean"]})
                   for r, s, w, sc in zip(res, succ, raw, succ_clean)]
        return metrics, records
