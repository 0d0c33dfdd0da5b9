"""Metric registry and the evaluation context every registered metric receives.

A registered metric is ``fn(ctx: EvalContext, split: str | None) -> (metrics: dict[str, float], items: list[dict])``.
``METRICS[name].splits`` lists the splits run when a config names the metric without a split
(``"mcq_cloze"`` = forget, retain and holdout; ``"mcq_cloze:forget"`` = one split).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import generation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable
    splits: tuple[str | None, ...]
    outputs: tuple[str, ...]  # public names (with "{split}") this metric produces; documentation and aliases
    doc: str = ""


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, splits: Sequence[str | None] = (None,), outputs: Sequence[str] = ()):
    """Decorator: register ``fn(ctx, split)`` under ``name``."""
    def deco(fn):
        if name in METRICS and METRICS[name].fn is not fn:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = MetricSpec(name, fn, tuple(splits), tuple(outputs), (fn.__doc__ or "").strip())
        return fn
    return deco


def get_metric(name: str) -> MetricSpec:
    _load_builtin()
    try:
        return METRICS[name]
    except KeyError as exc:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from exc


def _load_builtin() -> None:
    """Import the modules whose import registers the built-in metrics."""
    from . import asr, general, lm_eval_backend, margin, mcq, mia, muse  # noqa: F401


def prompt_hash(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else repr(prompt)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def item_id(row: Any, prefix: str, index: int) -> str:
    """A stable item id: the row's own ``id``/``item_id`` (top level or in ``meta``), else ``prefix#index``."""
    if isinstance(row, dict):
        for src in (row, row.get("meta") if isinstance(row.get("meta"), dict) else {}):
            for key in ("item_id", "id", "id_v2"):
                if src.get(key) not in (None, ""):
                    return str(src[key])
    return f"{prefix}#{index}"


def record(item: str, split: str | None, metric: str, prompt: Any, output: str, score: float | None,
           meta: dict | None = None) -> dict:
    """One per-item record (docs/architecture.md, "File contracts": items.jsonl)."""
    return {"item_id": item, "split": split, "metric": metric, "prompt_hash": prompt_hash(prompt),
            "output": output, "score": score, "meta": meta or {}}


@dataclass
class EvalContext:
    """What a metric needs: model, tokenizer, benchmark, validated config, optional reference values."""
    model: Any
    tokenizer: Any
    bench: Any
    cfg: Any                       # metrics.evaluate.EvalConfig
    reference: dict | None = None
    batch_checks: dict = field(default_factory=dict)
    # the evaluation's configured judges (judges.configured.EvalJudges); None = the built-in rules
    judges: Any = None

    def limit(self, rows: list, metric: str) -> list:
        n = self.cfg.max_items_for(metric)
        return list(rows) if n is None else list(rows)[:n]

    def generate(self, prompts: Sequence, max_new_tokens: int, tag: str, **kw) -> tuple[list[str], int]:
        """Batched greedy generation, used only if the first ``verify_n`` items reproduce the batch-1 outputs
        exactly (docs/evaluation.md, "MUSE metrics", [our choice]); otherwise the whole list is generated at batch size 1.
        Returns (outputs, batch size used)."""
        bs = int(self.cfg.batch_size)
        prompts = list(prompts)
        common = dict(progress=self.cfg.progress, **kw)
        if bs <= 1 or len(prompts) <= 1 or not self.cfg.verify_batching or kw.get("do_sample"):
            return generation.generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size=bs,
                                       **common), bs
        n = min(int(self.cfg.verify_n), len(prompts))
        ref = generation.generate(self.model, self.tokenizer, prompts[:n], max_new_tokens, batch_size=1, **common)
        outs = generation.generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size=bs, **common)
        ok = outs[:n] == ref
        self.batch_checks[tag] = ok
        if ok:
            return outs, bs
        log.warning("%s: batched generation differs from batch size 1 on the first %d items; "
                    "regenerating at batch size 1", tag, n)
        rest = generation.generate(self.model, self.tokenizer, prompts[n:], max_new_tokens, batch_size=1, **common)
        return ref + rest, 1
