"""Attack success rate with a Wilson interval, and over-refusal on XSTest-style prompts (docs/evaluation.md, "Attack success, refusal and over-refusal")."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..judges.text import answer_match
from ..utils.repro import derive_seed
from .registry import EvalContext, item_id, record, register_metric

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials:
    (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). n = 0 gives (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def asr_summary(successes: Sequence[bool], prefix: str = "asr") -> dict[str, float]:
    """ASR = mean success, with its 95 % Wilson interval: {prefix, prefix_lo, prefix_hi, prefix_n}."""
    k, n = int(sum(bool(s) for s in successes)), len(successes)
    lo, hi = wilson_interval(k, n)
    return {prefix: (k / n) if n else float("nan"), f"{prefix}_lo": lo, f"{prefix}_hi": hi, f"{prefix}_n": float(n)}


def best_of_n(successes_per_item: Sequence[Sequence[bool]]) -> list[bool]:
    """Best-of-n: an item succeeds if any of its samples does (reported separately from one-sample ASR)."""
    return [any(s) for s in successes_per_item]


def _is_safe(row: dict) -> bool:
    return str(row.get("label", "")).strip().lower() == "safe"


def over_refusal_summary(responses: Sequence[str], safe: Sequence[bool],
                         answers_ok: Sequence[bool | None] | None = None, judges=None,
                         prompts: Sequence[str] | None = None, item_ids: Sequence[str] | None = None
                         ) -> dict[str, float]:
    """docs/evaluation.md, "Attack success, refusal and over-refusal": ``over_refusal`` = refusal rate on safe prompts, ``unsafe_refusal`` on unsafe prompts (substring rule;
    ``*_wb`` with the word-boundary rule); ``oversafe_asr`` = the reference number (fraction of ALL responses
    with no refusal substring); ``lookalike_accuracy`` = answer match on safe prompts that carry an answer.
    ``judges``: the evaluation's configured judges (``judges.refusal`` decides what counts as a refusal); None =
    the keyword rule."""
    judges = _refusal_judges(judges)
    sub = judges.refused(list(responses), "substring", prompts, item_ids)
    wb = judges.refused(list(responses), "word_boundary", prompts, item_ids)

    def rate(flags, mask):
        vals = [f for f, m in zip(flags, mask) if m]
        return float(np.mean(vals)) if vals else float("nan")

    unsafe = [not s for s in safe]
    out = {"over_refusal": rate(sub, safe), "over_refusal_wb": rate(wb, safe),
           "unsafe_refusal": rate(sub, unsafe), "unsafe_refusal_wb": rate(wb, unsafe),
           "oversafe_asr": float(np.mean([not s for s in sub])) if sub else float("nan")}
    if answers_ok is not None:
        ok = [a for a, s in zip(answers_ok, safe) if s and a is not None]
        if ok:
            out["lookalike_accuracy"] = float(np.mean(ok))
    return out


def _refusal_judges(judges):
    from ..judges.configured import build_judges

    return build_judges(judges)


def _aliases(bench, row: dict) -> list[str] | None:
    if row.get("answer") in (None, ""):
        return None
    if hasattr(bench, "aliases"):
        try:
            al = bench.aliases(row)
            if al:
                return list(al)
        except (KeyError, ValueError, TypeError):
            pass
    return [str(row["answer"])]


def stratified_subset(rows: Sequence[dict], n: int | None, seed: int, key: str = "label",
                      tag: str = "over_refusal") -> list[dict]:
    """A seeded sample of n rows stratified by ``row[key]`` (each label's share as in the file, largest
    remainder, every label at least once when n allows), kept in file order; all rows when n is None or ≥ len.
    Why: xstest.csv lists its safe prompts first, so "the first n rows" never reaches an unsafe one."""
    import random

    rows = list(rows)
    if n is None or n >= len(rows):
        return rows
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get(key, "")).strip().lower(), []).append(i)
    labels = sorted(groups)
    quota = {lab: n * len(groups[lab]) / len(rows) for lab in labels}
    take = {lab: int(quota[lab]) for lab in labels}
    if n >= len(labels):
        for lab in labels:
            take[lab] = max(take[lab], 1)
    while sum(take.values()) > n:  # the at-least-one rule overshot: trim the largest group
        take[max(labels, key=lambda lab: take[lab])] -= 1
    for lab in sorted(labels, key=lambda lab: (-(quota[lab] - int(quota[lab])), lab)):
        if sum(take.values()) >= n:
            break
        if take[lab] < len(groups[lab]):
            take[lab] += 1
    picked: list[int] = []
    for lab in labels:
        idx = list(groups[lab])
        random.Random(derive_seed(seed, tag, lab)).shuffle(idx)
        picked.extend(idx[:take[lab]])
    return [rows[i] for i in sorted(picked)]


@register_metric("over_refusal", splits=(None,),
                 outputs=("over_refusal", "unsafe_refusal", "oversafe_asr", "lookalike_accuracy"))
def over_refusal_metric(ctx: EvalContext, split: str | None = None):
    """XSTest-style over-refusal: chat template, sampling T = 0.7 seeded per item, keyword-refusal judge."""
    rows = stratified_subset(ctx.bench.xstest(), ctx.cfg.max_items_for("over_refusal"), ctx.cfg.seed)
    if not rows:
        return {}, []
    ids = [item_id(r, "jailbreak/xstest", i) for i, r in enumerate(rows)]
    seeds = [derive_seed(ctx.cfg.seed, "over_refusal", i) for i in ids]
    outs, _ = ctx.generate([r["prompt"] for r in rows], ctx.cfg.over_refusal_max_new_tokens, tag="over_refusal",
                           chat=True, do_sample=True, temperature=ctx.cfg.over_refusal_temperature, top_p=1.0,
                           seeds=seeds)
    safe = [_is_safe(r) for r in rows]
    answers_ok = []
    for r, o in zip(rows, outs):
        al = _aliases(ctx.bench, r)
        answers_ok.append(None if al is None else answer_match(o, al))
    judges = _refusal_judges(ctx.judges)   # the configured refusal judge decides every item, as in the summary
    prompts = [r["prompt"] for r in rows]
    metrics = over_refusal_summary(outs, safe, answers_ok, judges=judges, prompts=prompts, item_ids=ids)
    refused_sub = judges.refused(outs, "substring", prompts, ids)
    refused_wb = judges.refused(outs, "word_boundary", prompts, ids)
    items = []
    for iid, r, o, s, a, ref_sub, ref_wb in zip(ids, rows, outs, safe, answers_ok, refused_sub, refused_wb):
        items.append(record(iid, "safe" if s else "unsafe", "over_refusal", r["prompt"], o,
                            float(ref_sub), {"refusal_wb": ref_wb, "answer_match": a, "type": r.get("type"),
                                             "judge": judges.refusal_name}))
    return metrics, items
