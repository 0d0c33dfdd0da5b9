"""MUSE VerbMem and KnowMem (docs/evaluation.md, "VerbMem", "KnowMem"), batched but item-for-item as ``swj0419/muse_bench``.

ROUGE: ``RougeScorer(["rouge1","rouge2","rougeL","rougeLsum"], use_stemmer=False).score(target, prediction)``;
the metric is 100 · mean ROUGE-L F1; ROUGE-L recall and ROUGE-1 F1 are logged beside it.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from .generation import decode, verified_generate
from .registry import EvalContext, item_id, record, register_metric

KNOWMEM_CUTS = ("\n\n", "\nQuestion", "Question:")  # applied in this order (docs/evaluation.md, "KnowMem")


# ROUGE exactly as ``rouge_score.rouge_scorer.RougeScorer(..., use_stemmer=False).score`` computes it (its
# tokenizer, n-gram overlap, LCS table and F-measure, operation for operation; tests/unit/test_metrics_muse.py
# compares the two on many strings). Own code because importing rouge_score imports nltk, which imports
# scikit-learn and most of nltk: seconds of start-up in every evaluation job, for a stemmer MUSE does not use.
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's ``tokenize(text, stemmer=None)``: lowercase, non-alphanumerics to spaces, split."""
    return [t for t in _SPACES.split(_NON_ALPHANUM.sub(" ", text.lower())) if _VALID_TOKEN.match(t)]


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_scores(target: list[str], prediction: list[str], n: int) -> tuple[float, float, float]:
    tc = Counter(tuple(target[i:i + n]) for i in range(len(target) - n + 1))
    pc = Counter(tuple(prediction[i:i + n]) for i in range(len(prediction) - n + 1))
    inter = 0
    for g in tc:
        inter += min(tc[g], pc[g])
    precision = inter / max(sum(pc.values()), 1)
    recall = inter / max(sum(tc.values()), 1)
    return precision, recall, _fmeasure(precision, recall)


def _lcs_scores(target: list[str], prediction: list[str]) -> tuple[float, float, float]:
    if not target or not prediction:
        return 0.0, 0.0, 0.0
    prev = [0] * (len(prediction) + 1)
    for t in target:  # the LCS table row by row (only the last row is kept)
        cur = [0]
        for j, c in enumerate(prediction, 1):
            cur.append(prev[j - 1] + 1 if t == c else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    precision, recall = lcs / len(prediction), lcs / len(target)
    return precision, recall, _fmeasure(precision, recall)


def rouge(target: str, prediction: str) -> dict[str, float]:
    """ROUGE scores of ``prediction`` against ``target`` (argument order as rouge_score's ``score``)."""
    t, p = rouge_tokens(target), rouge_tokens(prediction)
    _, l_rec, l_f1 = _lcs_scores(t, p)
    return {"rougeL_f1": float(l_f1), "rougeL_recall": float(l_rec),
            "rouge1_f1": float(_ngram_scores(t, p, 1)[2]), "rouge2_f1": float(_ngram_scores(t, p, 2)[2])}


def rouge_l_f1(target: str, prediction: str) -> float:
    return rouge(target, prediction)["rougeL_f1"]


# ---------------------------------------------------------------------------------------------------- KnowMem

def knowmem_prompt(question: str, icl: Sequence[dict] = (), trailing_space: bool = True) -> str:
    """10-shot ICL prefix ``"Question: {q}\\nAnswer: {a}\\n\\n"`` per pair, then ``"Question: {q}\\nAnswer: "``
    (trailing space, as MUSE). ``trailing_space=False`` drops that space: byte-level BPE tokenizers (the
    synthetic world's) encode it as a lone token never seen before an answer in training, which derails greedy
    decoding; the answer's own leading space then comes from the model."""
    prefix = "".join(f"Question: {p['question']}\nAnswer: {p['answer']}\n\n" for p in icl)
    return prefix + f"Question: {question}\nAnswer:" + (" " if trailing_space else "")


def cut_knowmem_output(output: str) -> str:
    """MUSE pruning: keep the text before the first "\\n\\n", then before "\\nQuestion", then before "Question:"."""
    for w in KNOWMEM_CUTS:
        output = output.split(w)[0]
    return output


def knowmem_scores(outputs: Sequence[str], answers: Sequence[str]) -> list[dict]:
    return [rouge(a, cut_knowmem_output(o)) for o, a in zip(outputs, answers)]


def _generate(ctx: EvalContext, prompts: list[str], max_new_tokens: int, tag: str,
              share_prefix: bool = False, stop_strings: Sequence[str] | None = None) -> tuple[list[str], int]:
    """Greedy MUSE generation (BOS added, classic clean-up on decode), batched where batch size 1 gives the same
    tokens (``generation.verified_generate``: checked once per model and settings)."""
    outs, used = verified_generate(ctx.model, ctx.tokenizer, prompts, max_new_tokens, batch_size=ctx.cfg.batch_size,
                                   verify=ctx.cfg.verify_batching, verify_n=ctx.cfg.verify_n, tag=tag,
                                   add_special_tokens=True, clean_up_tokenization_spaces=True,
                                   share_prefix=share_prefix, stop_strings=stop_strings, progress=ctx.cfg.progress)
    ctx.batch_checks[tag] = used != 1 or int(ctx.cfg.batch_size) <= 1
    return outs, used


_KNOWMEM_FILES = {"forget": ("forget_qa", "forget_qa_icl"), "retain": ("retain_qa", "retain_qa_icl")}


@register_metric("knowmem", splits=("forget", "retain"), outputs=("{split}_knowmem",))
def knowmem_metric(ctx: EvalContext, split: str):
    """KnowMem_f (forget) / KnowMem_r = Utility (retain): 100 · mean ROUGE-L F1 of the cut greedy answer."""
    qa_name, icl_name = _KNOWMEM_FILES[split]
    rows = ctx.limit(ctx.bench.knowmem(qa_name), "knowmem")
    icl = ctx.bench.knowmem(icl_name)
    name = f"{split}_knowmem"
    if not rows:
        return {}, []
    prompts = [knowmem_prompt(r["question"], icl, ctx.cfg.knowmem_trailing_space) for r in rows]
    # the in-context examples are the same for every question: encoded once, their key/value cache reused. A row
    # stops at its first cut marker: the cut keeps only the text before it, so the score is the one of the full
    # 32 tokens (tests/unit/test_metrics_generation.py); raw_output ends there
    outputs, used_bs = _generate(ctx, prompts, ctx.cfg.knowmem_max_new_tokens, name, share_prefix=True,
                                 stop_strings=KNOWMEM_CUTS)
    items, f1, rec, r1 = [], [], [], []
    for i, (row, prompt, out) in enumerate(zip(rows, prompts, outputs)):
        cut = cut_knowmem_output(out)
        s = rouge(row["answer"], cut)
        f1.append(s["rougeL_f1"]), rec.append(s["rougeL_recall"]), r1.append(s["rouge1_f1"])
        items.append(record(item_id(row, f"knowmem/{qa_name}", i), split, name, prompt, cut, s["rougeL_f1"],
                            {"rougeL_recall": s["rougeL_recall"], "rouge1_f1": s["rouge1_f1"],
                             "raw_output": out, "batch_size": used_bs}))
    metrics = {name: 100.0 * float(np.mean(f1)), f"{name}_rougeL_recall": 100.0 * float(np.mean(rec)),
               f"{name}_rouge1_f1": 100.0 * float(np.mean(r1))}
    return metrics, items


# ---------------------------------------------------------------------------------------------------- VerbMem

def verbmem_reference(tokenizer, gt: str, n_tokens: int = 128) -> str:
    """gt_short = decode(tokenizer(gt, add_special_tokens=True).input_ids[:n]) — BOS takes one of the n (docs/evaluation.md, "VerbMem")."""
    ids = tokenizer(gt, add_special_tokens=True)["input_ids"][:n_tokens]
    return decode(tokenizer, ids, clean_up_tokenization_spaces=True)


@register_metric("verbmem", splits=("forget",), outputs=("forget_verbmem",))
def verbmem_metric(ctx: EvalContext, split: str = "forget"):
    """VerbMem: 100 · mean ROUGE-L F1(gt truncated to 128 tokens incl. BOS, greedy 128-token continuation)."""
    rows = ctx.limit(ctx.bench.verbmem(), "verbmem")
    if not rows:
        return {}, []
    n_new = int(ctx.cfg.verbmem_max_new_tokens)
    prompts = [r["prompt"] for r in rows]
    outputs, used_bs = _generate(ctx, prompts, n_new, "forget_verbmem")
    items, f1, rec, r1 = [], [], [], []
    for i, (row, out) in enumerate(zip(rows, outputs)):
        s = rouge(verbmem_reference(ctx.tokenizer, row["gt"], n_new), out)
        f1.append(s["rougeL_f1"]), rec.append(s["rougeL_recall"]), r1.append(s["rouge1_f1"])
        items.append(record(item_id(row, "verbmem/forget", i), "forget", "forget_verbmem", row["prompt"], out,
                            s["rougeL_f1"], {"rougeL_recall": s["rougeL_recall"], "rouge1_f1": s["rouge1_f1"],
                                             "batch_size": used_bs}))
    return ({"forget_verbmem": 100.0 * float(np.mean(f1)),
             "forget_verbmem_rougeL_recall": 100.0 * float(np.mean(rec)),
             "forget_verbmem_rouge1_f1": 100.0 * float(np.mean(r1))}, items)
