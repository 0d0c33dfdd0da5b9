"""Clean evaluation of one model on one benchmark: every configured metric, aggregate values and per-item records.

``evaluate_model(model, tokenizer, bench, eval_cfg, reference=None) -> (metrics, items)``
- ``metrics``: public names (docs/evaluation.md, "Metric vocabulary"), e.g. forget_mcq_acc (cloze, primary), forget_mcq_acc_letter,
  forget_knowmem, retain_knowmem, forget_verbmem, privleak_auc, privleak_minkpp_auc, privleak (needs
  ``reference["auc_retrain"]``), repr_margin, repr_margin_p10, plus secondary values (ROUGE recall, cloze sum/norm).
- ``items``: ``{"item_id", "split", "metric", "prompt_hash", "output", "score", "meta"}`` per scored item.
``count_items(items)`` gives metrics.json's ``n_items``.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..utils.faults import at as fault_point
from .registry import METRICS, EvalContext, _load_builtin, get_metric

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("mcq_cloze", "mcq_letter", "knowmem", "verbmem", "privleak", "repr_margin")
MCQ_NORMS = ("acc", "acc_norm")
MARGIN_DIRECTIONS = ("own", "target")
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


class EvalConfigError(ValueError):
    """Invalid evaluation config; the message names the key (``eval.<key>``)."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"eval.{key}: {msg}")
        self.key = key


@dataclass
class EvalConfig:
    """Evaluation settings (defaults = docs/evaluation.md, "Synthetic-world defaults" for the synthetic benchmark).

    metrics: entries ``"<metric>"`` (all its default splits), ``"<metric>:<split>"`` or a public output name
        (``"forget_mcq_acc"``); metrics: mcq_cloze, mcq_letter (forget/retain/holdout), knowmem (forget/retain),
        verbmem, privleak, repr_margin, over_refusal (opt-in).
    max_items: None (all), an int for every metric, or ``{metric: int|None, "default": int|None}``; the first N
        items in file order (over_refusal: a seeded subset stratified by label, since xstest.csv lists its safe
        prompts first).
    mcq_norm: which cloze accuracy is ``{split}_mcq_acc``: "acc_norm" (default — Σ log p / characters removes the
        bias towards short answer strings, whose lengths vary between the answer values of one attribute, so the
        holdout split stays at chance) or "acc" (raw sum). Both are always reported as ``_cloze_norm``/``_cloze_sum``.
    mcq_bos: BOS before the letter-MCQ prompt (docs/evaluation.md, "Letter scoring"; default false = lm-eval v0.4.2 / WMDP convention).
    cloze_bos: BOS before the cloze context (default true: the synthetic models only ever see text after BOS,
        and cloze is the synthetic primary; the reference leaves it open: docs/evaluation.md, "Cloze scoring") [our choice].
    mcq_subject: description subject for letter prompts of rows without ``subject`` (str or {split: str}).
    knowmem_trailing_space: MUSE's prompt ends "Answer: " (true); false for byte-level BPE tokenizers (synthetic).
    knowmem_max_new_tokens / verbmem_max_new_tokens: 32 / 128 (docs/evaluation.md, "MUSE metrics"); VerbMem's reference is truncated to the same
        number of tokens incl. BOS.
    mink_k: K of Min-K% and Min-K%++ (0.4).
    dtype: the dtype the caller loads the model with (recorded; the CLI passes it to ``models.io.load_model``).
    verify_batching / verify_n: batched greedy generation is used only if the first ``verify_n`` items reproduce
        the batch-1 outputs exactly, else batch 1 (docs/evaluation.md, "MUSE metrics").
    margin_*: docs/evaluation.md, "Representation margin" — layer (index into hidden_states, -1 = last), anchors (mcq | knowmem | dialogue), direction
        (own | target; target needs ``reference["margin_centres"]``), pca_k (None = identity g).
    lm_eval_tasks / lm_eval_include_path: {split: lm-eval task} for the ``mcq_lm_eval`` metric (MMLU / WMDP
        through lm-eval-harness itself, metrics/lm_eval_backend.py), and a folder of local task YAMLs.
    lm_eval_data: ``split`` scores the split's own prepared rows with lm-eval's task definition (offline; a group
        such as mmlu is split per ``subject``); ``hub`` lets lm-eval load its own dataset (HF cache or network).
    over_refusal_*: XSTest-style generation (chat template, T = 0.7, 64 new tokens on synthetic items, docs/evaluation.md, "Attacks").
    seed: margin splits and sampling seeds. progress: tqdm (None = only for long lists).
    """
    metrics: list = field(default_factory=lambda: list(DEFAULT_METRICS))
    max_items: Any = None
    batch_size: int = 32
    mcq_norm: str = "acc_norm"
    mcq_bos: bool = False
    cloze_bos: bool = True
    mcq_subject: Any = "biology"
    knowmem_max_new_tokens: int = 32
    knowmem_trailing_space: bool = True
    verbmem_max_new_tokens: int = 128
    mink_k: float = 0.4
    dtype: str = "float32"
    verify_batching: bool = True
    verify_n: int = 8
    margin_layer: int = -1
    margin_anchors: str = "mcq"
    margin_direction: str = "own"
    margin_pca_k: int | None = None
    lm_eval_tasks: dict | None = None
    lm_eval_include_path: str | None = None
    lm_eval_data: str = "split"
    over_refusal_max_new_tokens: int = 64
    over_refusal_temperature: float = 0.7
    seed: int = 0
    progress: bool | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "EvalConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        for key in d:
            if key not in names:
                raise EvalConfigError(key, f"unknown key; allowed: {sorted(names)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        def pos_int(key, allow_none=False):
            v = getattr(self, key)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EvalConfigError(key, f"must be a positive integer, got {v!r}")

        for key in ("batch_size", "knowmem_max_new_tokens", "verbmem_max_new_tokens", "verify_n",
                    "over_refusal_max_new_tokens"):
            pos_int(key)
        pos_int("margin_pca_k", allow_none=True)
        for key in ("mcq_bos", "cloze_bos", "verify_batching"):
            if not isinstance(getattr(self, key), bool):
                raise EvalConfigError(key, "must be true or false")
        if self.mcq_norm not in MCQ_NORMS:
            raise EvalConfigError("mcq_norm", f"must be one of {MCQ_NORMS}")
        if not isinstance(self.mink_k, (int, float)) or not 0 < float(self.mink_k) <= 1:
            raise EvalConfigError("mink_k", "must be in (0, 1]")
        if self.dtype not in DTYPES:
            raise EvalConfigError("dtype", f"must be one of {DTYPES}")
        if self.margin_direction not in MARGIN_DIRECTIONS:
            raise EvalConfigError("margin_direction", f"must be one of {MARGIN_DIRECTIONS}")
        from .margin import ANCHORS

        if self.margin_anchors not in ANCHORS:
            raise EvalConfigError("margin_anchors", f"must be one of {ANCHORS}")
        if isinstance(self.margin_layer, bool) or not isinstance(self.margin_layer, int):
            raise EvalConfigError("margin_layer", "must be an integer (index into hidden_states)")
        if not float(self.over_refusal_temperature) > 0:
            raise EvalConfigError("over_refusal_temperature", "must be > 0")
        if self.lm_eval_tasks is not None:
            if not isinstance(self.lm_eval_tasks, dict) or any(
                    k not in ("forget", "retain", "holdout") or not isinstance(v, str) or not v
                    for k, v in self.lm_eval_tasks.items()):
                raise EvalConfigError("lm_eval_tasks", "must map forget / retain / holdout to an lm-eval task name")
        if self.lm_eval_include_path is not None and not isinstance(self.lm_eval_include_path, str):
            raise EvalConfigError("lm_eval_include_path", "must be a directory path (string)")
        if self.lm_eval_data not in ("split", "hub"):
            raise EvalConfigError("lm_eval_data", f"must be split or hub, got {self.lm_eval_data!r}")
        if not isinstance(self.mcq_subject, (str, dict)):
            raise EvalConfigError("mcq_subject", "must be a string or {split: subject}")
        mi = self.max_items
        if mi is not None and not isinstance(mi, dict):
            if isinstance(mi, bool) or not isinstance(mi, int) or mi < 1:
                raise EvalConfigError("max_items", "must be null, a positive integer or {metric: n}")
        if isinstance(mi, dict):
            _load_builtin()
            for k, v in mi.items():
                if k != "default" and k not in METRICS:
                    raise EvalConfigError("max_items", f"unknown metric {k!r}")
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                    raise EvalConfigError("max_items", f"{k}: must be null or a positive integer")
        if isinstance(self.metrics, str) or not isinstance(self.metrics, (list, tuple)):
            raise EvalConfigError("metrics", "must be a list")
        self.resolved()  # raises on unknown names

    def max_items_for(self, metric: str) -> int | None:
        if isinstance(self.max_items, dict):
            return self.max_items.get(metric, self.max_items.get("default"))
        return self.max_items

    def resolved(self) -> list[tuple[str, str | None]]:
        """(metric, split) units in config order, duplicates removed."""
        _load_builtin()
        aliases = output_aliases()
        units: list[tuple[str, str | None]] = []
        for entry in self.metrics:
            if not isinstance(entry, str):
                raise EvalConfigError("metrics", f"entries must be strings, got {entry!r}")
            if entry in METRICS:
                new = [(entry, s) for s in METRICS[entry].splits]
            elif ":" in entry:
                name, split = entry.split(":", 1)
                if name not in METRICS or split not in METRICS[name].splits:
                    raise EvalConfigError("metrics", f"unknown metric/split {entry!r}")
                new = [(name, split)]
            elif entry in aliases:
                new = [aliases[entry]]
            else:
                raise EvalConfigError("metrics", f"unknown metric {entry!r}; known: {sorted(METRICS)} "
                                                 f"or output names {sorted(aliases)}")
            units.extend(u for u in new if u not in units)
        return units


def output_aliases() -> dict[str, tuple[str, str | None]]:
    """Public output name → (metric, split), e.g. "forget_mcq_acc" → ("mcq_cloze", "forget")."""
    _load_builtin()
    out: dict[str, tuple[str, str | None]] = {}
    for spec in METRICS.values():
        for split in spec.splits:
            for o in spec.outputs:
                out.setdefault(o.format(split=split), (spec.name, split))
    return out


def evaluate_model(model, tokenizer, bench, eval_cfg: dict | EvalConfig | None = None,
                   reference: dict | None = None, seconds: dict | None = None,
                   judges=None) -> tuple[dict[str, float], list[dict]]:
    """Run every configured metric; returns (metrics, items); ``seconds`` (if given) receives each metric's wall
    time. ``reference``: {"auc_retrain": float,
    "auc_retrain_minkpp": float, "margin_centres": {...}} — each optional; PrivLeak is reported with the oracle's
    ``auc_retrain``, else on MUSE with the published constant (``privleak_reference``), else the AUCs alone."""
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_dict(eval_cfg)
    metrics: dict[str, float] = {}
    if any(name == "privleak" for name, _ in cfg.resolved()):
        reference, source = privleak_reference(bench, reference)
        if source is not None:
            metrics.update(source)
    ctx = EvalContext(model=model, tokenizer=tokenizer, bench=bench, cfg=cfg, reference=reference, judges=judges)
    items: list[dict] = []
    for name, split in cfg.resolved():
        t0 = time.perf_counter()
        m, it = get_metric(name).fn(ctx, split)
        took = time.perf_counter() - t0
        log.info("metric %s%s: %d items in %.1fs", name, f":{split}" if split else "", len(it), took)
        if seconds is not None:  # wall seconds per metric unit, for metrics.json's "seconds" (next to "metrics")
            seconds[f"{name}:{split}" if split else name] = round(took, 3)
        metrics.update({k: float(v) for k, v in m.items()})
        items.extend(it)
        fault_point(f"metric={name}")  # RU_FAULT_INJECT (tests only): a job that dies half-way through
    return metrics, items


def privleak_reference(bench, reference: dict | None) -> tuple[dict | None, dict[str, float] | None]:
    """AUC_retrain for PrivLeak and where it comes from: the run's retrain oracle (``reference``) when there is
    one, else the published constant of a MUSE corpus (data/muse.py), else none (PrivLeak is then not reported,
    only the AUCs). The source is recorded as metrics: ``privleak_auc_retrain`` (the value used) and
    ``privleak_auc_retrain_published`` (1 = published constant, 0 = this run's oracle)."""
    from ..data.muse import published_auc_retrain
    from .mia import reference_auc

    oracle = reference_auc(reference, "mink")
    if oracle is not None:
        return reference, {"privleak_auc_retrain": oracle, "privleak_auc_retrain_published": 0.0}
    from ..data.formats import BenchmarkError

    try:
        name = bench.manifest().get("benchmark") if hasattr(bench, "manifest") else None
    except (BenchmarkError, OSError, ValueError):  # no manifest (a hand-made benchmark): no published constant
        name = None
    published = published_auc_retrain(name)
    if published is None:
        return reference, None
    log.info("privleak: no retrain oracle; AUC_retrain = %s, the published %s constant", published, name)
    return ({**(reference or {}), "auc_retrain": published},
            {"privleak_auc_retrain": published, "privleak_auc_retrain_published": 1.0})


def count_items(items: list[dict]) -> dict[str, int]:
    """Per public metric, the number of items behind it (privleak: forget + holdout; retain is logged only)."""
    c = Counter(it["metric"] for it in items if (it.get("meta") or {}).get("counted", True))
    return dict(c)
