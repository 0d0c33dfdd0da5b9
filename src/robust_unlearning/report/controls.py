"""Zero-strength controls (docs/evaluation.md, attacks): every attack row is read next to the same attack at zero
strength, and an attack that never beats its control on any model is flagged — a broken attack must not pass
as a robust model.

The control of an attack row is
- for attacks with a strength knob (``ZERO_STRENGTH``): the row of the same attack and model whose strength
  setting is zero (GCG without adversarial tokens, latent ε = 0, direction λ = 0, prefill k = 0), all other
  settings equal;
- for the model attacks (relearn, quantize, weight noise — σ = 0 is the model itself): the clean evaluation of
  the same model;
- where no zero-strength row was run, the white-box attacks' own in-job clean score of the same items
  (``<metric>_clean``: GCG, latent and direction score every item with and without the attack);
- otherwise (template and multi-turn prompts): none; such an attack is reported as "no control", never flagged.

"Beats" compares the attack's headline number (the first of ``HEADLINE_METRICS`` the attack writes; higher
means more forgotten knowledge recovered) with the control's by more than ``tol``.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

ZERO_STRENGTH: dict[str, str] = {"gcg": "n_tokens", "latent": "eps", "direction": "lam", "prefill": "k"}
# model attacks: the clean evaluation of the same model is the zero-strength control (σ = 0 noise is the model)
CLEAN_CONTROL = ("relearn", "quantize", "weight_noise")
HEADLINE_METRICS = ("asr", "forget_mcq_acc", "forget_knowmem", "forget_qa_logprob", "forget_verbmem")
NONE_ATTACK = "none"


def _params(text: str) -> dict[str, str]:
    from ..config.grid import parse_param_string
    return parse_param_string(str(text))


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def headline_metric(df: pd.DataFrame, attack: str) -> str | None:
    have = set(df.loc[df["attack"] == attack, "metric"])
    return next((m for m in HEADLINE_METRICS if m in have), None)


def is_control(attack: str, params: str) -> bool:
    knob = ZERO_STRENGTH.get(attack)
    return knob is not None and _is_zero(_params(params).get(knob, "nan"))


def find_control(attack: str, params: str, candidates) -> str | None:
    """Among ``candidates`` (attack_params strings of the same attack), the zero-strength control of ``params``:
    the same settings with the strength knob at zero. None if there is none or ``params`` is a control."""
    knob = ZERO_STRENGTH.get(attack)
    if knob is None or is_control(attack, params):
        return None
    want = {k: v for k, v in _params(params).items() if k != knob}
    for c in candidates:
        p = _params(c)
        if _is_zero(p.get(knob, "nan")) and {k: v for k, v in p.items() if k != knob} == want:
            return str(c)
    return None


def control_table(df: pd.DataFrame, tol: float = 1e-9) -> pd.DataFrame:
    """One row per (attack, attack_params, model_id) with its headline value, its control's value and whether
    it beats the control. Columns: attack, attack_params, model_id, metric, value, control, control_value, beats."""
    rows: list[dict[str, Any]] = []
    ok = df[df["status"].fillna("ok") == "ok"] if "status" in df.columns else df
    value = {(r.model_id, r.attack, str(r.attack_params), r.metric): r.value for r in ok.itertuples()}
    for attack in sorted(set(ok["attack"]) - {NONE_ATTACK}):
        metric = headline_metric(ok, attack)
        if metric is None:
            continue
        sub = ok[(ok["attack"] == attack) & (ok["metric"] == metric)]
        for r in sub.itertuples():
            if attack in CLEAN_CONTROL:
                ctl_attack, ctl_params = NONE_ATTACK, None
                ctl_metric = metric
                ctl = next((v for (m, a, _p, name), v in value.items()
                            if m == r.model_id and a == NONE_ATTACK and name == ctl_metric), None)
            else:
                ctl_attack = attack
                ctl_params = find_control(attack, str(r.attack_params), set(sub["attack_params"].astype(str)))
                if ctl_params is None:
                    if is_control(attack, str(r.attack_params)):
                        continue  # the control row itself
                    # white-box attacks score the same items without the attack in the same job (`<metric>_clean`,
                    # equal to the zero-strength run by tests/unit/test_mcq_one_scorer.py): that is the control
                    in_job = value.get((r.model_id, attack, str(r.attack_params), f"{metric}_clean"))
                    if in_job is not None:
                        beats = None if pd.isna(in_job) or pd.isna(r.value) else bool(r.value > in_job + tol)
                        rows.append({"attack": attack, "attack_params": r.attack_params, "model_id": r.model_id,
                                     "metric": metric, "value": r.value, "control": f"{attack}/{r.attack_params} "
                                     "(same job, no attack)", "control_value": in_job, "beats": beats})
                        continue
                    rows.append({"attack": attack, "attack_params": r.attack_params, "model_id": r.model_id,
                                 "metric": metric, "value": r.value,
                                 "control": "no control" if attack not in ZERO_STRENGTH else "control not run",
                                 "control_value": math.nan, "beats": None})
                    continue
                ctl = value.get((r.model_id, attack, ctl_params, metric))
            ctl_label = f"{ctl_attack}/{ctl_params or 'clean'}"
            beats = None if ctl is None or pd.isna(ctl) or pd.isna(r.value) else bool(r.value > ctl + tol)
            rows.append({"attack": attack, "attack_params": r.attack_params, "model_id": r.model_id, "metric": metric,
                         "value": r.value, "control": ctl_label if ctl is not None else f"{ctl_label} (missing)",
                         "control_value": math.nan if ctl is None else ctl, "beats": beats})
    return pd.DataFrame(rows, columns=["attack", "attack_params", "model_id", "metric", "value", "control",
                                       "control_value", "beats"])


def never_beats_control(df: pd.DataFrame, tol: float = 1e-9) -> list[str]:
    """Attacks that have at least one comparable row and beat their control on no model and no setting."""
    table = control_table(df, tol)
    flagged = []
    for attack, grp in table.groupby("attack"):
        decided = grp["beats"].dropna()
        if len(decided) and not decided.astype(bool).any():
            flagged.append(str(attack))
    return sorted(flagged)


def seed_summary(df: pd.DataFrame, attack: str = "weight_noise", seed_key: str = "seed") -> pd.DataFrame:
    """Mean and worst case (highest headline value: most knowledge recovered) over the ``seed`` axis of an
    attack, per model and remaining setting. Columns: model_id, setting, metric, mean, worst, n_seeds."""
    metric = headline_metric(df, attack)
    cols = ["model_id", "setting", "metric", "mean", "worst", "n_seeds"]
    if metric is None:
        return pd.DataFrame(columns=cols)
    sub = df[(df["attack"] == attack) & (df["metric"] == metric)]
    groups: dict[tuple, list[float]] = {}
    for r in sub.itertuples():
        if pd.isna(r.value):  # a missing draw is not averaged in (it is a `missing` row of its own)
            continue
        p = _params(str(r.attack_params))
        p.pop(seed_key, None)
        setting = "_".join(f"{k}~{v}" for k, v in sorted(p.items())) or "default"
        groups.setdefault((r.model_id, setting), []).append(float(r.value))
    rows = [{"model_id": m, "setting": s, "metric": metric, "mean": sum(v) / len(v), "worst": max(v),
             "n_seeds": len(v)} for (m, s), v in sorted(groups.items())]
    return pd.DataFrame(rows, columns=cols)
