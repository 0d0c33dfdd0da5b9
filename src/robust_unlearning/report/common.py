"""Shared vocabulary of the report: parameter strings, model ids, labels, orderings, seed aggregation.

Everything here is pure and deterministic so that two aggregations of the same results tree give
byte-identical tables. The report reads only ``metrics.json`` / ``run.json`` files (docs/architecture.md, "File contracts");
it never imports ``methods`` or ``attacks``, so the names it knows are plain strings.
"""
from __future__ import annotations

import math
import re

from ..config.grid import param_string, parse_param_string
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------- columns
#: Columns of the tidy frame, in CSV order (the first ten are the public contract).
COLUMNS = ["benchmark", "method", "params", "seed", "model_id", "attack", "attack_params", "metric", "value",
           "status", "n_items", "judge", "checkpoint", "note"]
KEY = ["model_id", "attack", "attack_params", "metric"]
NONE_ATTACK, DEFAULT_PARAMS, NA = "none", "default", "-"

# ------------------------------------------------------------------------------------------- orderings
ATTACK_ORDER = ["none", "relearn", "prefill", "jailbreak_templates", "multi_turn", "gcg", "latent", "direction",
                "quantize", "weight_noise"]
PROMPT_ATTACKS = ["prefill", "jailbreak_templates", "multi_turn"]
WHITEBOX_ATTACKS = ["gcg", "latent", "direction", "quantize", "weight_noise"]
METHOD_ORDER = ["pretrained", "base", "retrain", "ga", "gd", "graddiff", "grad_diff", "npo", "simnpo", "rmu",
                "task_vector", "sam_npo", "prism"]
METRIC_ORDER = ["forget_verbmem", "forget_knowmem", "retain_knowmem", "forget_mcq_acc", "retain_mcq_acc",
                "holdout_mcq_acc", "general_mcq_acc", "general_ppl", "forget_mcq_acc_letter",
                "retain_mcq_acc_letter", "privleak", "privleak_auc",
                "privleak_minkpp_auc", "unlearn_score", "us_utility", "us_effectiveness", "us_privacy", "asr",
                "over_refusal", "repr_margin", "s_per_step", "tokens_per_s", "peak_mem_mb"]
US_METRICS = ["unlearn_score", "us_utility", "us_effectiveness", "us_privacy"]
# run.json "cost": compute, plus the run-level training-term means (methods/gradients.py TERM_METRICS) that every
# gradient method writes there (0.0 = the method's update has no such term)
COST_METRICS = ["s_per_step", "peak_mem_mb", "tokens_per_s", "probe_grad_ratio", "sam_loss_gain",
                "gcd_removed_fraction"]
# note prefix of a ``missing`` row whose number cannot be computed (as opposed to a cell that was not run);
# tables show such a cell as "–" with a footnote giving the reason
NOT_COMPUTABLE = "not computable"
STATUS_RANK = {"ok": 0, "diverged": 1, "failed": 2, "missing": 3}

METRIC_LABELS = {
    "unlearn_score": "US", "us_utility": "U", "us_effectiveness": "E", "us_privacy": "P",
    "s_per_step": "s/step", "peak_mem_mb": "peak MB", "tokens_per_s": "tok/s", "asr": "ASR",
    "forget_verbmem": "VerbMem_f", "forget_knowmem": "KnowMem_f", "retain_knowmem": "KnowMem_r",
    "forget_mcq_acc": "MCQ_f", "retain_mcq_acc": "MCQ_r", "holdout_mcq_acc": "MCQ_h",
    "forget_mcq_acc_letter": "MCQ_f (letter)", "retain_mcq_acc_letter": "MCQ_r (letter)",
    "privleak": "PrivLeak", "over_refusal": "over-refusal", "repr_margin": "margin",
    "general_mcq_acc": "MCQ_gen", "general_ppl": "PPL_gen", "forget_qa_logprob": "log p(answer)_f",
}
ATTACK_LABELS = {"relearn": "relearn", "prefill": "prefill", "jailbreak_templates": "templates",
                 "multi_turn": "multi-turn", "gcg": "GCG", "latent": "latent", "direction": "direction",
                 "quantize": "quant", "weight_noise": "noise"}
US_DEFINITION = ("US = (U·E·P)^(1/3) with each component clipped to [0,1] against the base (target) model "
                 "(docs/evaluation.md, 'Unlearn Score'): U = KnowMem_r(u)/KnowMem_r(target) (WMDP: MMLU above chance), "
                 "E = 1 − VerbMem_f(u)/VerbMem_f(target) (WMDP: WMDP accuracy above chance), "
                 "P = 1 − |PrivLeak|/100 (WMDP: 1 − mean prompt-attack ASR).")

# --------------------------------------------------------------------------------------- param strings
_NUMERIC = re.compile(r"^[-+]?[0-9.]+(e[-+]?[0-9]+)?$", re.IGNORECASE)


def parse_params(text: str | None) -> dict[str, str]:
    """``"fraction~0.5_steps~10"`` → ``{"fraction": "0.5", "steps": "10"}``; ``default``/``-``/empty → ``{}``.

    Folder names are written by :func:`robust_unlearning.config.grid.param_string`, which turns every ``_``
    inside keys and values into ``-``, so ``_`` only separates pairs; keys come back with ``_`` restored.
    """
    if text is None or str(text) in ("", DEFAULT_PARAMS, NA):
        return {}
    return parse_param_string(str(text))


def format_params(params: dict[str, Any]) -> str:
    """Inverse of :func:`parse_params` (keys sorted, ``default`` when empty)."""
    return param_string(params)


def drop_param(text: str, key: str) -> str:
    """The parameter string without ``key`` (used to pool e.g. weight-noise seeds like model seeds)."""
    d = parse_params(text)
    if key not in d:
        return text if text not in ("", NA) else DEFAULT_PARAMS
    d.pop(key)
    return format_params(d)


def as_number(value: str) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


# -------------------------------------------------------------------------------------------- model ids
def parse_model_id(model_id: str) -> dict[str, str]:
    """``models/base`` → method ``base``; ``unlearn/<method>/<params>/seed~<s>[/<checkpoint…>]`` → parts.

    Unknown layouts are kept (method = the id itself) so that nothing is dropped silently.
    """
    parts = [p for p in str(model_id).strip("/").split("/") if p]
    if len(parts) == 2 and parts[0] == "models":
        return {"method": parts[1], "params": NA, "seed": NA, "checkpoint": NA}
    if len(parts) >= 4 and parts[0] == "unlearn" and parts[3].startswith("seed~"):
        return {"method": parts[1], "params": parts[2], "seed": parts[3][len("seed~"):],
                "checkpoint": "/".join(parts[4:]) or NA}
    if len(parts) >= 3 and parts[0] == "unlearn":
        return {"method": parts[1], "params": parts[2], "seed": NA, "checkpoint": "/".join(parts[3:]) or NA}
    return {"method": "/".join(parts), "params": NA, "seed": NA, "checkpoint": NA}


# ------------------------------------------------------------------------------------------------ labels
_METHOD_LABELS = {"pretrained": "Pretrained", "base": "Base", "retrain": "Retrain", "ga": "GA", "gd": "GD", "graddiff": "GradDiff",
                  "grad_diff": "GradDiff", "npo": "NPO", "simnpo": "SimNPO", "rmu": "RMU",
                  "task_vector": "Task Vector", "tv": "Task Vector", "sam_npo": "SAM+NPO", "prism": "PRISM",
                  "dpo": "DPO", "idk": "IdK"}
_TOKEN_LABELS = {"gdr": "GDR", "klr": "KLR", "sam": "SAM", "npo": "NPO", "ga": "GA", "prism": "PRISM"}


def method_label(method: str, params: str | None = None) -> str:
    """Human label: ``npo`` + ``retain_loss~gdr`` → ``NPO+GDR``; ``base`` → ``Base``; unknown → upper-cased."""
    method = str(method)
    if method in _METHOD_LABELS:
        label = _METHOD_LABELS[method]
    else:
        label = "+".join(_TOKEN_LABELS.get(t, t.upper()) for t in method.split("_") if t)
    retain = parse_params(params).get("retain_loss", "")
    if retain and retain.lower() not in ("none", "null", "false", "0"):
        suffix = "+" + _TOKEN_LABELS.get(retain.lower(), retain.upper())
        if not label.endswith(suffix):
            label += suffix
    return label


def setting_label(attack: str, attack_params: str) -> str:
    """Short column label for an attack setting: ``relearn`` + ``fraction~0.5_steps~10`` → ``relearn steps=10 frac=0.5``."""
    name = ATTACK_LABELS.get(attack, attack)
    d = parse_params(attack_params)
    if not d:
        return name
    keys = sorted(d, key=lambda k: (k != "steps", k))  # steps first: the axis people look for
    short = {"fraction": "frac"}
    return name + " " + " ".join(f"{short.get(k, k)}={d[k]}" for k in keys)


# ------------------------------------------------------------------------------------------- sort keys
def _is_zero(text: str | None) -> bool:
    try:
        return float(text) == 0.0
    except (TypeError, ValueError):
        return False


def readable_label(method: str, params: str) -> str:
    """``prism`` + ``gamma-max~0_gcd-scope~global_rho~0.01`` → ``PRISM w/o probe``; ablations joined by ", "."""
    label = method_label(method, params)
    if method != "prism":
        return label
    d = parse_params(params)
    off = []
    if _is_zero(d.get("gamma_max")) or _is_zero(d.get("gamma_target")) or d.get("gamma_schedule") == "off":
        off.append("probe")
    if _is_zero(d.get("rho")):
        off.append("SAM")
    if d.get("gcd_scope") == "none":
        off.append("GCD")
    if d.get("gamma_mode") == "relative" and "probe" not in off:
        label += " (rel. γ)"
    return label + (" w/o " + ", ".join(off) if off else "")


def configuration_names(configs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Names for figure legends and table columns: the readable label, plus the parameters that tell apart
    configurations sharing a label."""
    labels = {c: readable_label(*c) for c in configs}
    out = {}
    for c, lab in labels.items():
        same = [o for o in configs if labels[o] == lab]
        if len(same) == 1:
            out[c] = lab
            continue
        dicts = [parse_params(o[1]) for o in same]
        keys = [k for k in sorted({k for d in dicts for k in d}) if len({d.get(k) for d in dicts}) > 1]
        mine = parse_params(c[1])
        out[c] = f"{lab} ({', '.join(f'{k}={mine.get(k, chr(183))}' for k in keys) or c[1]})"
    return out


def _rank(value: str, order: list[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _natural(text: str) -> tuple:
    """Numbers inside strings sort numerically (``steps~10`` < ``steps~100``)."""
    return tuple((0, float(t), "") if _NUMERIC.match(t) else (1, 0.0, t)
                 for t in re.split(r"([-+]?[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)", str(text)) if t)


def method_key(method: str) -> tuple:
    return _rank(method, METHOD_ORDER)


def attack_key(attack: str) -> tuple:
    return _rank(attack, ATTACK_ORDER)


def metric_key(metric: str) -> tuple:
    return _rank(metric, METRIC_ORDER)


def params_key(params: str) -> tuple:
    return _natural(params)


def seed_key(seed: str) -> tuple:
    return _natural(seed)


def sort_tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Deterministic row order: method, params, seed, checkpoint, model, attack, attack params, metric."""
    if df.empty:
        return df.reset_index(drop=True)
    order = sorted(range(len(df)), key=lambda i: (
        method_key(df["method"].iat[i]), params_key(df["params"].iat[i]), seed_key(df["seed"].iat[i]),
        str(df["checkpoint"].iat[i]), str(df["model_id"].iat[i]), attack_key(df["attack"].iat[i]),
        params_key(df["attack_params"].iat[i]), metric_key(df["metric"].iat[i])))
    return df.iloc[order].reset_index(drop=True)


# ------------------------------------------------------------------------------- aggregation over seeds
def pool_seeds(df: pd.DataFrame, by: Iterable[str]) -> pd.DataFrame:
    """Mean/std (ddof 1) over seeds of the ``ok`` rows of each group; statuses counted.

    Returns one row per group with ``mean, std, n, n_rows, status, reason`` where ``status`` is ``ok`` when every
    row is ok, ``partial`` when some values exist but some rows are not ok, otherwise the worst status;
    ``reason`` joins the reasons of rows noted ``not computable: <reason>``.
    """
    by = list(by)
    records = []
    cols = by + ["mean", "std", "n", "n_rows", "status", "reason"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    # numpy over the whole frame once, then per group (a pandas selection per group was most of the aggregate's time)
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=float)
    status_of = df["status"].astype(str).to_numpy()
    note_of = df["note"].astype(str).to_numpy() if "note" in df else np.full(len(df), "", dtype=object)
    keys = df[by].to_numpy(dtype=object)
    codes = df.groupby(by, sort=False, dropna=False).ngroup().to_numpy()   # numbered in order of appearance
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for idx in np.split(order, bounds):
        key = tuple(keys[idx[0]])
        vals = values[idx]
        ok = status_of[idx] == "ok"
        good = vals[ok & np.isfinite(vals)]
        statuses = sorted(set(status_of[idx]), key=lambda s: STATUS_RANK.get(s, 9))
        if len(good) and len(good) == len(idx):
            status = "ok"
        elif len(good):
            status = "partial"
        else:
            bad = [s for s in statuses if s != "ok"]
            status = bad[-1] if bad else "missing"  # ok rows without a finite value count as missing
        reasons = sorted({n[len(NOT_COMPUTABLE) + 2:] for n in note_of[idx] if n.startswith(NOT_COMPUTABLE + ": ")})
        records.append(dict(zip(by, key), mean=float(good.mean()) if len(good) else math.nan,
                            std=float(good.std(ddof=1)) if len(good) > 1 else math.nan,
                            n=int(len(good)), n_rows=int(len(idx)), status=status, reason="; ".join(reasons)))
    return pd.DataFrame.from_records(records, columns=cols)


def decimals(x: float) -> int:
    """Decimals shown for a value of this magnitude (about four significant digits, at most three decimals)."""
    a = abs(x)
    return 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 10 else 3


def fmt_number(x: float, ndigits: int | None = None) -> str:
    if x is None or not math.isfinite(x):
        return "nan"
    return f"{x:.{decimals(x) if ndigits is None else ndigits}f}"


def fmt_mean_std(mean: float, std: float | None = None) -> str:
    """``mean`` or ``mean ± std`` with the std at the mean's precision (``20.00 ± 0.50``)."""
    nd = decimals(mean) if mean is not None and math.isfinite(mean) else None
    if std is None or not math.isfinite(std):
        return fmt_number(mean, nd)
    return f"{fmt_number(mean, nd)} ± {fmt_number(std, nd)}"


def add_config_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns the tables and figures group by: ``label`` (human), ``setting`` (attack params without seed)."""
    out = df.copy()
    out["label"] = [method_label(m, p) for m, p in zip(out["method"], out["params"])]
    out["setting"] = [drop_param(ap, "seed") for ap in out["attack_params"]]
    return out


def config_order(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Distinct (method, params) pairs in table order: base, retrain, baselines, PRISM."""
    pairs = {(m, p) for m, p in zip(df["method"], df["params"])}
    return sorted(pairs, key=lambda mp: (method_key(mp[0]), params_key(mp[1])))


def settings_order(df: pd.DataFrame, attack: str) -> list[str]:
    sub = df[df["attack"] == attack]
    return sorted(set(sub["setting"]), key=lambda s: tuple(
        (k, as_number(v) if isinstance(as_number(v), float) else 0.0, str(v))
        for k, v in sorted(parse_params(s).items())))


def metrics_order(metrics: Iterable[str]) -> list[str]:
    return sorted(set(metrics), key=metric_key)
