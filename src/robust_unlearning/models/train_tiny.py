"""Train the embedded default's base model (and the retrain oracle) from scratch on the synthetic world.

Recipe (docs/benchmarks.md, "Base model and retrain oracle"): AdamW β (0.9, 0.95), weight decay 0.01, cosine
schedule with warmup, fp32, loss on all non-pad tokens. Early stop when greedy exact match on train-template QA
reaches the threshold on forget and retain. Greedy exact match is computed without generation: greedy decoding
reproduces the answer exactly iff the argmax at every teacher-forced answer position is the answer token, so one
batched forward suffices.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data.collate import batches, encode_qa, pad_batch
from ..utils.io import atomic_write_json
from ..utils.repro import seed_everything


@dataclass
class TinyTrainConfig:
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 32
    max_len: int = 256
    warmup_ratio: float = 0.02
    weight_decay: float = 0.01
    early_stop_qa_em: float = 0.95
    seed: int = 0
    fixed_epochs: int | None = None   # the oracle trains exactly as many epochs as the target did


MICRO_BATCH = 8


def length_sorted_micro_batches(chunk: list[dict], pad_id: int, size: int = MICRO_BATCH) -> list[dict]:
    """One training batch as padded micro-batches of ``size`` examples of similar length.

    The batch itself (which examples, one optimizer step) is unchanged; only its padding is: the mixture's QA lines
    (~10 tokens) and documents (up to ~90) in one padded batch are three quarters padding. (Batches grouped by
    length ACROSS the epoch were tried and rejected: the retrain oracle then learned its retain facts far more
    slowly, docs/findings.md.)"""
    ordered = sorted(chunk, key=lambda e: len(e["input_ids"]))
    return [pad_batch(ordered[i:i + size], pad_id) for i in range(0, len(ordered), size)]


@torch.inference_mode()
def greedy_exact_match(model, tokenizer, qa_pairs: list[tuple[str, str]], batch_size: int = 128) -> float:
    """Fraction of (question, answer) pairs whose answer greedy decoding reproduces token for token."""
    if not qa_pairs:
        return float("nan")
    model.eval()
    examples = [encode_qa(tokenizer, q, a, max_len=256) for q, a in qa_pairs]
    hits = 0
    for i in range(0, len(examples), batch_size):
        b = pad_batch(examples[i:i + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        pred = logits[:, :-1].argmax(-1)
        gold = b["labels"][:, 1:]
        mask = gold != -100
        hits += int(((pred == gold) | ~mask).all(dim=1).sum())
    return hits / len(examples)


def train_from_scratch(model, tokenizer, examples: list[dict], cfg: TinyTrainConfig, qa_checks: dict[str, list],
                       log_path: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``model`` on ``examples``; returns the training summary (epochs run, final QA exact match)."""
    seed_everything(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    epochs = cfg.fixed_epochs or cfg.epochs
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = epochs * steps_per_epoch
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    history, tokens, t0 = [], 0, time.perf_counter()
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        bar = tqdm(batches(examples, cfg.batch_size, seed=cfg.seed * 1000 + epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for chunk in bar:
            micro = length_sorted_micro_batches(chunk, tokenizer.pad_token_id)
            n_targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
            loss = 0.0
            for b in micro:  # Σ token losses / the whole batch's token count: the same step as one padded batch
                part = model(**b, num_items_in_batch=n_targets).loss
                part.backward()
                loss += part.detach()
                tokens += int(b["attention_mask"].sum())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"base-model training diverged at epoch {epoch}: loss {loss.item()}")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        em = {name: greedy_exact_match(model, tokenizer, pairs) for name, pairs in qa_checks.items()}
        rec = {"epoch": epoch, "loss": sum(losses) / len(losses), "qa_exact_match": em,
               "elapsed_s": time.perf_counter() - t0}
        history.append(rec)
        print(f"epoch {epoch}: loss {rec['loss']:.4f} qa_em {em}", flush=True)
        if log_path:
            atomic_write_json(log_path, {"history": history})
        if cfg.fixed_epochs is None and em and all(v >= cfg.early_stop_qa_em for v in em.values()):
            break
    elapsed = time.perf_counter() - t0
    return {"epochs_trained": epoch, "history": history, "final_qa_exact_match": history[-1]["qa_exact_match"],
            "tokens_per_s": tokens / max(elapsed, 1e-9), "train_seconds": elapsed,
            "n_examples": len(examples)}
