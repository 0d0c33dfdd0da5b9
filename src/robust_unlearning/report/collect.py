"""Collect every ``metrics.json`` / ``run.json`` of one results tree into one tidy long table.

Why tidy: every later view (CSV, paper tables, figures) is a pivot of the same rows, so a number can
only be wrong in one place. One row per (model_id, attack, attack_params, metric); a cell the caller
expected but that has no file is a ``missing`` row with an empty value, never a silent hole.

Sources (docs/architecture.md, "Results tree"):
- ``eval/<model id>/<attack>/<params>/metrics.json``  → metric rows (status from the file);
- ``unlearn/<method>/<params>/seed~<s>/run.json``     → cost rows (``s_per_step``, ``peak_mem_mb``,
  ``tokens_per_s``) under attack ``none``/``default``; a run whose status is ``diverged`` marks every row
  of that model ``diverged``;
- Unlearn Score rows (docs/evaluation.md, "Unlearn Score") from ``metrics.unlearn_score.unlearn_score`` with the base
  model's clean metrics as target, for every evaluation (clean and attacked) it can score.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from robust_unlearning.report.common import (
    COLUMNS, COST_METRICS, DEFAULT_PARAMS, KEY, NONE_ATTACK, NOT_COMPUTABLE, PROMPT_ATTACKS, US_METRICS,
    parse_model_id, sort_tidy)
from robust_unlearning.utils.io import DataFormatError, read_json


log = logging.getLogger(__name__)

ScoreFn = Callable[[Mapping[str, float], Mapping[str, float]], Mapping[str, Any]]
BASE_ID = "models/base"


def _default_score_fn() -> ScoreFn | None:
    try:
        from robust_unlearning.metrics.unlearn_score import unlearn_score
    except ImportError as exc:  # written by another part; the report still works without US rows
        log.warning("Unlearn Score rows skipped: metrics.unlearn_score not importable (%s)", exc)
        return None
    return unlearn_score


def _float(value: Any) -> float:
    """A metric value as float; None / non-numeric / non-finite → NaN (written as an empty CSV cell)."""
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _judge_name(judge: Any) -> str:
    if isinstance(judge, Mapping) and isinstance(judge.get("asr"), Mapping):  # judges.configured describe()
        judge = judge["asr"]
    if isinstance(judge, Mapping):
        name = judge.get("name") or judge.get("judge") or ""
        model = judge.get("model") or judge.get("model_id") or ""
        return f"{name}:{model}" if name and model else str(name or model)
    return "" if judge is None else str(judge)


class _Rows:
    """Accumulates rows keyed by (model_id, attack, attack_params, metric); the first writer wins."""

    def __init__(self, benchmark: str):
        self.benchmark = benchmark
        self.rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}

    def add(self, model_id: str, attack: str, attack_params: str, metric: str, value: float, status: str,
            n_items: Any = None, judge: str = "", note: str = "") -> None:
        key = (model_id, attack, attack_params, metric)
        if key in self.rows:
            log.debug("duplicate row %s ignored (first source kept)", key)
            return
        ident = parse_model_id(model_id)
        n = _float(n_items)
        self.rows[key] = {
            "benchmark": self.benchmark, "method": ident["method"], "params": ident["params"],
            "seed": ident["seed"], "model_id": model_id, "attack": attack, "attack_params": attack_params,
            "metric": metric, "value": value, "status": status, "n_items": n, "judge": judge,
            "checkpoint": ident["checkpoint"], "note": note}

    def cells_with_results(self) -> set[tuple[str, str, str]]:
        """Cells holding at least one evaluation row (cost rows from run.json alone do not count)."""
        return {k[:3] for k in self.rows if k[3] not in COST_METRICS}

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame.from_records(list(self.rows.values()), columns=COLUMNS)
        for col in COLUMNS:
            if col not in ("value", "n_items"):
                df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
        df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
        df["n_items"] = pd.to_numeric(df["n_items"], errors="coerce").astype(float)
        return sort_tidy(df)


def _eval_location(rel: Path) -> tuple[str, str, str] | None:
    """``<model id>/<attack>/<params>/metrics.json`` (model id of any depth) → (model id, attack, params).

    Also accepts an evaluation of an attacked model folder addressed by its own path,
    ``attack/<attack>/<params>/<model id>/none/default`` → (model id, attack, params).
    """
    parts = rel.parts[:-1]
    if len(parts) < 3:
        return None
    model_id, attack, aparams = "/".join(parts[:-2]), parts[-2], parts[-1]
    mparts = parts[:-2]
    if attack == NONE_ATTACK and len(mparts) >= 4 and mparts[0] == "attack":
        return "/".join(mparts[3:]), mparts[1], mparts[2]
    return model_id, attack, aparams


def _read_evals(bench: Path, rows: _Rows, scored: list[tuple[str, str, str, dict, str]]) -> None:
    eval_dir = bench / "eval"
    if not eval_dir.is_dir():
        log.warning("%s: no eval/ folder", bench)
        return
    for path in sorted(eval_dir.rglob("metrics.json")):
        loc = _eval_location(path.relative_to(eval_dir))
        if loc is None:
            log.warning("%s: not at eval/<model id>/<attack>/<params>/metrics.json; skipped", path)
            continue
        model_id, attack, aparams = loc
        try:
            doc = read_json(path)
            if not isinstance(doc, Mapping) or not isinstance(doc.get("metrics", {}), Mapping):
                raise DataFormatError(f"{path}: expected an object with a 'metrics' object")
        except (DataFormatError, OSError) as exc:
            log.warning("unreadable metrics file: %s", exc)
            rows.add(model_id, attack, aparams, "", math.nan, "failed", note=f"unreadable: {path.name}")
            continue
        for field, want in (("model", model_id), ("attack", attack), ("attack_params", aparams),
                            ("benchmark", rows.benchmark)):
            got = doc.get(field)
            if got is not None and str(got) != want:
                log.warning("%s: %s=%r disagrees with its location (%r); the location is used", path, field,
                            got, want)
        status = str(doc.get("status") or "ok")
        n_items = doc.get("n_items") if isinstance(doc.get("n_items"), Mapping) else {}
        judge = _judge_name(doc.get("judge"))
        raw = dict(doc.get("metrics") or {})
        metrics = {str(k): _float(v) for k, v in raw.items()}
        if not metrics:
            rows.add(model_id, attack, aparams, "", math.nan, status if status != "ok" else "failed",
                     note="metrics.json without metrics")
        empty = _judged_nothing(metrics)
        for name, value in metrics.items():
            if attack == NONE_ATTACK and name in COST_METRICS and model_id.startswith("unlearn/"):
                continue  # cost comes from run.json (one source per number)
            note = "" if raw[name] is None or not math.isnan(value) else "non-numeric or non-finite value"
            row_status, n = status, n_items.get(name)
            if math.isnan(value) and row_status == "ok":   # no number: a visible `missing`, never an ok blank
                row_status = "missing"
                note = f"{NOT_COMPUTABLE}: no finite value in metrics.json" + (f" ({note})" if note else "")
            if empty and _is_rate(name):  # a rate over nothing: not a measured 0 (nor a perfect defence)
                value, row_status, n, note = math.nan, "missing", 0, f"{NOT_COMPUTABLE}: nothing was judged (n_items = 0)"
            elif name == "privleak" and "privleak_auc_retrain_published" in metrics and not math.isnan(value):
                note = ("AUC_retrain: published MUSE constant (no retrain oracle)"
                        if metrics["privleak_auc_retrain_published"] == 1.0 else "AUC_retrain: this run's retrain oracle")
            rows.add(model_id, attack, aparams, name, value, row_status, n, judge, note)
        if empty:
            metrics = {k: (math.nan if _is_rate(k) else v) for k, v in metrics.items()}
        scored.append((model_id, attack, aparams, metrics, status))


def _judged_nothing(metrics: Mapping[str, float]) -> bool:
    """An attack evaluation whose judged set is empty (``n_judged`` or else ``n_items`` is 0)."""
    if not any(_is_rate(k) for k in metrics):
        return False
    n = metrics.get("n_judged", metrics.get("n_items", math.nan))
    return n == 0


def _is_rate(name: str) -> bool:
    """A judged rate (ASR, its interval and variants, refusal rate), undefined over an empty judged set."""
    return name.startswith("asr") or name.startswith("refusal_rate")


def _read_runs(bench: Path, rows: _Rows) -> dict[str, str]:
    """Cost rows from every run.json; returns {model id: run status}."""
    statuses: dict[str, str] = {}
    unlearn = bench / "unlearn"
    if not unlearn.is_dir():
        return statuses
    for path in sorted(unlearn.rglob("run.json")):
        model_id = path.parent.relative_to(bench).as_posix()
        try:
            doc = read_json(path)
            if not isinstance(doc, Mapping):
                raise DataFormatError(f"{path}: expected a JSON object")
        except (DataFormatError, OSError) as exc:
            log.warning("unreadable run file: %s", exc)
            statuses[model_id] = "failed"
            for name in COST_METRICS:
                rows.add(model_id, NONE_ATTACK, DEFAULT_PARAMS, name, math.nan, "failed", note="unreadable run.json")
            continue
        status = str(doc.get("status") or "ok")
        statuses[model_id] = status
        cost = doc.get("cost") if isinstance(doc.get("cost"), Mapping) else {}
        for name in COST_METRICS:
            value = _float(cost.get(name))
            if status == "ok" and math.isnan(value):
                log.warning("%s: cost.%s absent", path, name)
                rows.add(model_id, NONE_ATTACK, DEFAULT_PARAMS, name, value, "missing", note="absent from run.json")
            else:
                rows.add(model_id, NONE_ATTACK, DEFAULT_PARAMS, name, value, status)
    return statuses


def _add_scores(rows: _Rows, scored: list[tuple[str, str, str, dict, str]], score_fn: ScoreFn | None,
                mode: str | None) -> None:
    """US rows for every evaluation the score function can score (it raises on absent inputs: skipped).

    WMDP (``mode="wmdp"``): the third axis is 1 − mean ASR of the model's prompt attacks (docs/evaluation.md, "Unlearn Score"),
    so a clean evaluation gets ``asr_values`` from the same model's prompt-attack evaluations; without
    them the function returns sqrt(U·E) and no ``us_privacy``, which the row note flags.
    """
    if score_fn is None:
        return
    target = next((m for mid, a, p, m, s in scored if mid == BASE_ID and a == NONE_ATTACK and p == DEFAULT_PARAMS),
                  None)
    inputs = _us_inputs(mode)

    def wants_score(attack: str, metrics: Mapping[str, float]) -> bool:
        """A clean evaluation always has a US (or a visible missing one); an attacked one when it measured any
        of the score's inputs (a model attack re-runs the clean metrics; an input attack reports ASR only)."""
        return attack == NONE_ATTACK or any(k in metrics for k in inputs)

    if target is None:
        log.warning("Unlearn Score rows missing: no clean evaluation of %s (the target)", BASE_ID)
        for model_id, attack, aparams, metrics, status in scored:
            if attack == NONE_ATTACK:
                rows.add(model_id, attack, aparams, "unlearn_score", math.nan, "missing",
                         note=f"{NOT_COMPUTABLE}: no clean evaluation of {BASE_ID} (the target)")
        return
    target = {k: v for k, v in target.items() if not math.isnan(v)}
    asr: dict[str, list[float]] = {}
    n_unmeasured: dict[str, int] = {}
    for model_id, attack, _, metrics, status in scored:
        if attack in PROMPT_ATTACKS and status == "ok":
            if math.isnan(metrics.get("asr", math.nan)):  # nothing judged: left out, never a perfect defence
                n_unmeasured[model_id] = n_unmeasured.get(model_id, 0) + 1
            else:
                asr.setdefault(model_id, []).append(metrics["asr"])
    n_scored = 0
    for model_id, attack, aparams, metrics, status in scored:
        if all(k in metrics for k in US_METRICS):
            continue  # the evaluation reported its own score
        kwargs: dict[str, Any] = {} if mode is None else {"mode": mode}
        if mode == "wmdp":
            kwargs["asr_values"] = asr.get(model_id) if attack == NONE_ATTACK else None
        reason = ""
        try:
            result = score_fn({k: v for k, v in metrics.items() if not math.isnan(v)}, target, **kwargs)
            values = {k: _float((result or {}).get(k)) for k in US_METRICS}
            if math.isnan(values["unlearn_score"]):
                reason = "the score function returned no value"
        except (KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
            reason = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        if reason:
            if wants_score(attack, metrics):
                log.warning("no Unlearn Score for %s %s/%s: %s", model_id, attack, aparams, reason)
                rows.add(model_id, attack, aparams, "unlearn_score", math.nan, "missing",
                         note=f"{NOT_COMPUTABLE}: {reason}")
            continue
        note = "computed by report" + ("; no privacy axis: US = sqrt(U*E)" if math.isnan(values["us_privacy"])
                                       else "")
        if mode == "wmdp" and attack == NONE_ATTACK and n_unmeasured.get(model_id):
            note += f"; {n_unmeasured[model_id]} prompt attack(s) judged nothing, left out of R"
        for name, value in values.items():
            if not math.isnan(value):
                rows.add(model_id, attack, aparams, name, value, status, note=note)
        n_scored += 1
    if not n_scored:
        log.warning("no evaluation could be given an Unlearn Score (mode %s; inputs absent?)", mode or "default")


def _us_inputs(mode: str | None) -> tuple[str, ...]:
    try:
        from robust_unlearning.metrics.unlearn_score import input_metrics
    except ImportError:
        return ()
    return input_metrics(mode)


def _normalise_expected(expected: Iterable[Any] | None) -> list[tuple[str, str, str]]:
    out = []
    for cell in expected or []:
        if isinstance(cell, Mapping):
            cell = (cell["model_id"], cell.get("attack", NONE_ATTACK), cell.get("attack_params", DEFAULT_PARAMS))
        model_id, attack, aparams = (str(x) for x in cell)
        out.append((model_id.strip("/"), attack, aparams or DEFAULT_PARAMS))
    return out


def _add_missing(rows: _Rows, expected: list[tuple[str, str, str]], run_status: Mapping[str, str]) -> None:
    """One row per metric seen for the same attack setting elsewhere (else one row with an empty metric)."""
    observed: dict[tuple[str, str], set[str]] = {}
    by_attack: dict[str, set[str]] = {}
    for (mid, attack, aparams, metric) in rows.rows:
        if metric and metric not in COST_METRICS:
            observed.setdefault((attack, aparams), set()).add(metric)
            by_attack.setdefault(attack, set()).add(metric)
    present = rows.cells_with_results()
    for model_id, attack, aparams in expected:
        if (model_id, attack, aparams) in present:
            continue
        status = "diverged" if run_status.get(model_id) == "diverged" else "missing"
        metrics = observed.get((attack, aparams)) or by_attack.get(attack) or {""}
        log.warning("expected cell %s %s/%s has no metrics.json: marked %s", model_id, attack, aparams, status)
        for metric in sorted(metrics):
            rows.add(model_id, attack, aparams, metric, math.nan, status, note="expected, no metrics.json")


def collect_results(bench_dir: str | os.PathLike, benchmark: str,
                    expected: Iterable[Any] | None = None, *, score_fn: ScoreFn | None | str = "default",
                    us_mode: str | None = "auto") -> pd.DataFrame:
    """The tidy table of one benchmark's results tree.

    ``expected``: cells the caller's grid promises, as ``(model_id, attack, attack_params)`` tuples (or
    dicts with those keys); each one without a ``metrics.json`` becomes ``missing`` rows (``diverged`` when
    the model's run.json says it diverged). ``score_fn``: the Unlearn Score function (default
    ``metrics.unlearn_score.unlearn_score``; ``None`` disables the US rows). ``us_mode``: passed as
    ``mode=`` to it; ``"auto"`` = ``"wmdp"`` for a benchmark named ``*wmdp*``, ``"synthetic"`` for the synthetic
    world (utility from retain MCQ above chance: its KnowMem_r is ~0 for a small model), else the function's default
    (not passed); ``None`` = never passed.
    Never raises on a malformed or absent file: it logs and records a ``failed``/``missing`` row.
    """
    bench = Path(bench_dir)
    rows = _Rows(benchmark)
    fn = _default_score_fn() if isinstance(score_fn, str) else score_fn
    scored: list[tuple[str, str, str, dict, str]] = []
    run_status = _read_runs(bench, rows)
    _read_evals(bench, rows, scored)
    if us_mode == "auto":
        us_mode = ("wmdp" if "wmdp" in benchmark.lower() else "synthetic" if benchmark.lower() == "synthetic"
                   else None)
    _add_scores(rows, scored, fn, us_mode)
    _add_missing(rows, _normalise_expected(expected), run_status)
    df = rows.frame()
    diverged = {m for m, s in run_status.items() if s == "diverged"}
    if diverged:  # a diverged run taints every number of that model, including later attacks on it
        mask = df["model_id"].isin(diverged) & (df["status"] == "ok")
        df.loc[mask, "status"] = "diverged"
    return df


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The tidy CSV (atomic); NaN values are empty cells."""
    from robust_unlearning.utils.io import atomic_write_text

    path = Path(path)
    cols = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    atomic_write_text(path, df[cols].to_csv(index=False, lineterminator="\n"))
    return path


__all__ = ["collect_results", "write_csv", "KEY"]
