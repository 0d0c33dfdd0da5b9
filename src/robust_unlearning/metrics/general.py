"""General-knowledge utility (opt-in): does a pretrained model keep its general ability through fine-tuning and
unlearning? Independent of the benchmark: the data ship with the package (``data/general/``, see its README).

- ``general_ppl``: perplexity exp(Σ NLL / Σ scored tokens) over short general English passages, the tokens
  scored as in Min-K% (``generation.token_logprobs``, BOS when the tokenizer adds one, first token unscored);
  also ``general_nll`` (mean token NLL, nats).
- ``general_mcq_acc``: four-choice general-knowledge questions scored as the benchmark's cloze MCQ
  (``mcq.score_mcq``, ``Question: …\\nAnswer:`` + " choice", BOS per ``cloze_bos``); ``mcq_norm`` picks the
  summed or character-normalised log-likelihood, both also reported (``_cloze_sum`` / ``_cloze_norm``); each
  item record holds its category. Chance = 0.25.
Both honour ``evaluation.max_items`` (the first N items in file order).
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from ..utils.io import read_jsonl
from .generation import token_logprobs
from .mcq import LETTERS, mcq_accuracy, score_mcq
from .registry import EvalContext, item_id, record, register_metric

GENERAL_DIR = Path(__file__).resolve().parents[1] / "data" / "general"


@lru_cache(maxsize=None)
def _load(name: str) -> tuple:
    return tuple(read_jsonl(GENERAL_DIR / name))


def general_passages() -> list[dict]:
    """``{"id", "text"}`` rows of ``data/general/passages.jsonl``."""
    return list(_load("passages.jsonl"))


def general_mcq() -> list[dict]:
    """``{"id", "category", "question", "choices", "answer"}`` rows of ``data/general/mcq.jsonl``."""
    return list(_load("mcq.jsonl"))


def perplexity(per_text_logprobs) -> tuple[float, float, int]:
    """(ppl, mean NLL, n tokens) over every scored token of every text (token-weighted, not per-text mean)."""
    total, n = 0.0, 0
    for lp in per_text_logprobs:
        total += float(lp.sum())
        n += int(lp.numel())
    if n == 0:
        return float("nan"), float("nan"), 0
    nll = -total / n
    return math.exp(nll), nll, n


@register_metric("general_ppl", outputs=("general_ppl",))
def general_ppl_metric(ctx: EvalContext, split):
    """Perplexity on held-out general English passages (lower = more general language ability kept)."""
    rows = ctx.limit(general_passages(), "general_ppl")
    if not rows:
        return {}, []
    scored = token_logprobs(ctx.model, ctx.tokenizer, [r["text"] for r in rows], batch_size=ctx.cfg.batch_size,
                            add_bos=True, progress=ctx.cfg.progress)
    lps = [s["logprobs"] for s in scored]
    ppl, nll, n = perplexity(lps)
    items = []
    for i, (row, lp) in enumerate(zip(rows, lps)):
        m = int(lp.numel())
        text_nll = float(-lp.sum() / m) if m else float("nan")
        items.append(record(item_id(row, "general/passage", i), "general", "general_ppl", row["text"], "",
                            math.exp(text_nll) if m else float("nan"), {"n_tokens": m, "nll": text_nll}))
    return {"general_ppl": ppl, "general_nll": nll}, items


@register_metric("general_mcq_acc", outputs=("general_mcq_acc",))
def general_mcq_metric(ctx: EvalContext, split):
    """General-knowledge 4-choice accuracy, cloze scoring (higher = more general knowledge kept)."""
    rows = ctx.limit(general_mcq(), "general_mcq_acc")
    if not rows:
        return {}, []
    scored = score_mcq(ctx.model, ctx.tokenizer, rows, "cloze", add_bos=ctx.cfg.cloze_bos,
                       batch_size=ctx.cfg.batch_size, progress=ctx.cfg.progress)
    key = "pred_norm" if ctx.cfg.mcq_norm == "acc_norm" else "pred"
    items = []
    for i, (row, s) in enumerate(zip(rows, scored)):
        items.append(record(item_id(row, "general/mcq", i), "general", "general_mcq_acc", s["context"],
                            LETTERS[s[key]], float(s[key] == s["gold"]),
                            {"mode": "cloze", "norm": ctx.cfg.mcq_norm, "bos": ctx.cfg.cloze_bos,
                             "category": row.get("category"), "gold": s["gold"], "pred_sum": s["pred"],
                             "pred_norm": s["pred_norm"], "logprobs": s["logprobs"]}))
    out = {"general_mcq_acc": mcq_accuracy(scored, key),
           "general_mcq_acc_cloze_sum": mcq_accuracy(scored, "pred"),
           "general_mcq_acc_cloze_norm": mcq_accuracy(scored, "pred_norm")}
    return out, items
