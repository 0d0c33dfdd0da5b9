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
