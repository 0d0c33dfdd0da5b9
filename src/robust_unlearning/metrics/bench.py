"""Batching benchmark: batched vs one-item-at-a-time scoring and generation on the same model, side by side.

Why: evaluation is most of the pipeline's wall time; this measures what batching buys (target ≥ 5× for greedy
generation) and checks on the same items that batched greedy outputs equal the batch-1 outputs.
"""
from __future__ import annotations

import time
from typing import Any

from .generation import encode_pair, generate, score_continuations
from .mcq import cloze_context
from .muse import knowmem_prompt


def _items(bench_or_items: Any, n_items: int) -> tuple[list[dict], list[str]]:
    """(MCQ rows, generation prompts) from a Benchmark (forget MCQ; KnowMem forget prompts with ICL) or from a dict
    ``{"mcq": rows, "prompts": [str]}``."""
    if isinstance(bench_or_items, dict):
        return list(bench_or_items.get("mcq", []))[:n_items], list(bench_or_items.get("prompts", []))[:n_items]
    bench = bench_or_items
    rows = list(bench.mcq("forget"))[:n_items]
    icl = bench.knowmem("forget_qa_icl")
    prompts = [knowmem_prompt(r["question"], icl) for r in list(bench.knowmem("forget_qa"))[:n_items]]
    return rows, prompts


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_eval(model, tokenizer, bench_or_items: Any, n_items: int = 32, batch_size: int = 32,
               max_new_tokens: int = 32) -> dict[str, float]:
    """Items/s and speed-ups of batched vs batch-1 cloze-MCQ scoring and greedy generation.

    Returns mcq_items_per_s_batched / _single, mcq_speedup, generation_items_per_s_batched / _single,
    generation_speedup, generation_match (1.0 iff batched outputs equal batch-1 outputs on every item),
    mcq_max_abs_diff (largest log-likelihood difference batched vs single), n_mcq, n_generation.
    """
    rows, prompts = _items(bench_or_items, n_items)
    out: dict[str, float] = {"n_mcq": float(len(rows)), "n_generation": float(len(prompts))}
    if rows:
        pairs = [encode_pair(tokenizer, cloze_context(r["question"]), " " + str(c), True)
                 for r in rows for c in r["choices"]]
        # warm-up outside the clock (allocator, kernels)
        score_continuations(model, tokenizer, pairs[:2], batch_size=2, progress=False)
        b, tb = _timed(lambda: score_continuations(model, tokenizer, pairs, batch_size=batch_size, progress=False))
        s, ts = _timed(lambda: [score_continuations(model, tokenizer, [p], batch_size=1, progress=False)[0]
                                for p in pairs])
        out.update(mcq_items_per_s_batched=len(rows) / tb, mcq_items_per_s_single=len(rows) / ts,
                   mcq_speedup=ts / tb,
                   mcq_max_abs_diff=max(abs(x.logprob - y.logprob) for x, y in zip(b, s)))
    if prompts:
        generate(model, tokenizer, prompts[:1], 2, batch_size=1, progress=False)
        gb, tb = _timed(lambda: generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                                         progress=False))
        gs, ts = _timed(lambda: generate(model, tokenizer, prompts, max_new_tokens, batch_size=1, progress=False))
        out.update(generation_items_per_s_batched=len(prompts) / tb, generation_items_per_s_single=len(prompts) / ts,
                   generation_speedup=ts / tb, generation_match=float(gb == gs))
    return out


# ---------------------------------------------------------------------------------------------------------------
# a real model, end to end: VerbMem + KnowMem + PrivLeak against a one-item loop shaped like the MUSE reference
# ---------------------------------------------------------------------------------------------------------------

MUSE_METRICS = ("verbmem", "knowmem", "privleak")
MUSE_KEYS = ("forget_verbmem", "forget_knowmem", "retain_knowmem", "privleak_auc")


def muse_reference_loop(model, tokenizer, bench, n_items: int | None = None, knowmem_max_new_tokens: int = 32,
                        verbmem_max_new_tokens: int = 128, trailing_space: bool = True,
                        k: float = 0.4) -> tuple[dict[str, float], dict[str, float]]:
    """VerbMem, KnowMem and the Min-K% AUC one item at a time, as ``swj0419/muse_bench`` computes them:
    ``tokenizer(prompt, return_tensors="pt")`` → ``model.generate(..., do_sample=False)`` → decode the new tokens;
    one forward per text for Min-K%. Same prompts, lengths and stop tokens as ``evaluate_model``.
    Returns (metrics, seconds per metric)."""
    import numpy as np
    import torch

    from ..models.tokenizer import stop_token_ids
    from .generation import decode, model_device
    from .mia import mia_auc, min_k
    from .muse import cut_knowmem_output, knowmem_prompt, rouge, verbmem_reference

    device = model_device(model)
    stops = [int(t) for t in stop_token_ids(tokenizer) if t is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    take = (lambda rows: list(rows)) if n_items is None else (lambda rows: list(rows)[:n_items])
    model.eval()

    @torch.inference_mode()
    def one(prompt: str, n_new: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids.to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                             do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=stops or None)
        new = out[0, ids.shape[1]:].tolist()
        cut = next((j for j, t in enumerate(new) if t in stops), len(new))
        return decode(tokenizer, new[:cut], clean_up_tokenization_spaces=True)

    metrics, seconds = {}, {}
    t0 = time.perf_counter()
    f1 = [rouge(verbmem_reference(tokenizer, r["gt"], verbmem_max_new_tokens), one(r["prompt"],
                                                                                     verbmem_max_new_tokens))
          ["rougeL_f1"] for r in take(bench.verbmem())]
    metrics["forget_verbmem"] = 100.0 * float(np.mean(f1))
    seconds["verbmem"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for split, (qa, icl_name) in {"forget": ("forget_qa", "forget_qa_icl"),
                                  "retain": ("retain_qa", "retain_qa_icl")}.items():
        icl = bench.knowmem(icl_name)
        f1 = [rouge(r["answer"], cut_knowmem_output(one(knowmem_prompt(r["question"], icl, trailing_space),
                                                        knowmem_max_new_tokens)))["rougeL_f1"]
              for r in take(bench.knowmem(qa))]
        metrics[f"{split}_knowmem"] = 100.0 * float(np.mean(f1))
    seconds["knowmem"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mink = {}
    with torch.inference_mode():
        for split in ("forget", "holdout", "retain"):
            mink[split] = []
            for text in take(bench.privleak(split)):
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=True).input_ids.to(device)
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
                tok_lp = lp.gather(-1, ids[0, 1:, None])[:, 0].double().cpu().numpy()
                mink[split].append(min_k(tok_lp, k))
    metrics["privleak_auc"] = mia_auc(mink["forget"], mink["holdout"])
    seconds["privleak"] = time.perf_counter() - t0
    return metrics, seconds


def bench_muse_real(model, tokenizer, bench, n_items: int | None = None, batch_size: int = 32,
                    eval_overrides: dict | None = None) -> dict:
    """End-to-end wall time of VerbMem + KnowMem + PrivLeak through ``evaluate_model`` (the batching check
    included: no verdict is known for a model held only in memory) against ``muse_reference_loop`` on the same
    items; the metric values must agree. ``n_items`` caps every file (None = the benchmark's full counts)."""
    from . import generation
    from .evaluate import evaluate_model

    cfg = {"metrics": list(MUSE_METRICS), "batch_size": int(batch_size), "max_items": n_items,
           **(eval_overrides or {})}
    generation._VERDICTS.clear()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ours, _ = evaluate_model(model, tokenizer, bench, cfg, seconds=seconds)
    t_ours = time.perf_counter() - t0
    ref, ref_seconds = muse_reference_loop(
        model, tokenizer, bench, n_items, knowmem_max_new_tokens=int(cfg.get("knowmem_max_new_tokens", 32)),
        verbmem_max_new_tokens=int(cfg.get("verbmem_max_new_tokens", 128)),
        trailing_space=bool(cfg.get("knowmem_trailing_space", True)), k=float(cfg.get("mink_k", 0.4)))
    t_ref = sum(ref_seconds.values())
    diff = {key: abs(ours[key] - ref[key]) for key in MUSE_KEYS}
    per_metric = {m: {"reference_s": ref_seconds[m],
                      "ours_s": sum(v for u, v in seconds.items() if u.split(":")[0] == m)} for m in MUSE_METRICS}
    for row in per_metric.values():
        row["speedup"] = row["reference_s"] / row["ours_s"] if row["ours_s"] else float("nan")
    return {"real_model_muse_speedup": t_ref / t_ours, "real_model_reference_s": t_ref, "real_model_ours_s": t_ours,
            "real_model_per_metric": per_metric, "real_model_values": ours, "real_model_reference_values": ref,
            "real_model_max_abs_diff": max(diff.values()), "real_model_numbers_equal": max(diff.values()) < 1e-9,
            "real_model_n_items": {"verbmem": len(_cap(bench.verbmem(), n_items)),
                                   "knowmem": 2 * len(_cap(bench.knowmem("forget_qa"), n_items)),
                                   "privleak": sum(len(_cap(bench.privleak(s), n_items))
                                                   for s in ("forget", "holdout", "retain"))},
            "real_model_batch_size": int(batch_size)}


def _cap(rows, n):
    rows = list(rows)
    return rows if n is None else rows[:n]
