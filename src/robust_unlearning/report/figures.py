"""Figures from the tidy frame (matplotlib, Agg backend; each figure as PNG and PDF, written atomically).

A figure whose data is absent is skipped with a logged note, never an error; :func:`write_figures`
returns the files it wrote. Files: ``relearning_curves``, ``tradeoff``, ``attack_heatmap_<metric>``,
``prism_ablation``, and ``loss_landscape`` when precomputed 1-D slices are given.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from robust_unlearning.report.common import (  # noqa: E402
    DEFAULT_PARAMS, METRIC_LABELS, NONE_ATTACK, US_METRICS, attack_key, config_order, method_label,
    parse_params, setting_label, settings_order)
from robust_unlearning.report.tables import Cells, forget_metrics  # noqa: E402
from robust_unlearning.utils.io import DataFormatError, read_json  # noqa: E402

log = logging.getLogger(__name__)

FORGET_PRIORITY = ["forget_mcq_acc", "forget_verbmem", "forget_knowmem", "forget_mcq_acc_letter"]
FORGET_PRIORITY_WMDP = ["forget_mcq_acc_letter", "forget_mcq_acc", "forget_knowmem", "forget_verbmem"]
UTILITY_PRIORITY = ["retain_knowmem", "retain_mcq_acc", "retain_mcq_acc_letter", "us_utility"]
_PNG_META = {"Software": None}
_PDF_META = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


# ------------------------------------------------------------------------------------------- helpers
def _save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG + PDF via a temporary sibling name and ``os.replace`` (no half-written figure survives)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for ext, meta in (("png", _PNG_META), ("pdf", _PDF_META)):
            final = out_dir / f"{name}.{ext}"
            tmp = out_dir / f".{name}.{ext}.{os.getpid()}.tmp"
            try:
                fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(final)
    finally:
        plt.close(fig)
    return written


def _names(configs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Legend names: the method label, plus its params where two configurations share a label."""
    labels = {c: method_label(*c) for c in configs}
    dup = {v for v in labels.values() if list(labels.values()).count(v) > 1}
    return {c: (f"{lab} ({c[1]})" if lab in dup else lab) for c, lab in labels.items()}


def _colors(configs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    cmap = plt.get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(configs)}


def primary_forget_metric(df: pd.DataFrame, candidates: Iterable[str] | None = None) -> str | None:
    """The forget metric a single-metric figure shows: MCQ (synthetic), VerbMem (MUSE), letter MCQ (WMDP)."""
    present = set(df["metric"]) if candidates is None else set(candidates)
    bench = str(df["benchmark"].iat[0]).lower() if not df.empty else ""
    order = FORGET_PRIORITY_WMDP if "wmdp" in bench else FORGET_PRIORITY
    return next((m for m in order if m in present), None)


def _mlabel(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# ------------------------------------------------------------------------------------------- figures
def relearning_curves(cells: Cells, out_dir: Path) -> list[Path]:
    """Forget metric vs relearning steps (0 = clean) per method; one panel per forget metric."""
    sub = cells.df[cells.df["attack"] == "relearn"]
    settings = [s for s in settings_order(cells.df, "relearn") if "steps" in parse_params(s)]
    metrics = [m for m in forget_metrics(cells, ["relearn"]) if m != "asr"]
    if sub.empty or not settings or not metrics:
        log.info("figure relearning_curves skipped: no relearning results with a steps parameter")
        return []
    configs = [c for c in config_order(sub) if c in set(zip(sub["method"], sub["params"]))]
    names, colors = _names(configs), _colors(configs)
    groups: dict[str, list[tuple[float, str]]] = {}  # other params (fraction …) → [(steps, setting)]
    for s in settings:
        d = parse_params(s)
        steps = float(d.pop("steps"))
        groups.setdefault(", ".join(f"{k}={v}" for k, v in sorted(d.items())), []).append((steps, s))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for c in configs:
            for gi, (gname, pts) in enumerate(sorted(groups.items())):
                xs, ys, es = [], [], []
                clean = cells.cells.get((*c, NONE_ATTACK, DEFAULT_PARAMS, metric))
                if clean is not None and clean["n"]:
                    xs.append(0.0), ys.append(clean["mean"]), es.append(_nan0(clean["std"]))
                for steps, s in sorted(pts):
                    cell = cells.cells.get((*c, "relearn", s, metric))
                    if cell is not None and cell["n"]:
                        xs.append(steps), ys.append(cell["mean"]), es.append(_nan0(cell["std"]))
                if len(xs) < 1 or (len(xs) == 1 and xs[0] == 0.0):
                    continue
                label = names[c] + (f" [{gname}]" if gname and len(groups) > 1 else "")
                ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, color=colors[c],
                            linestyle=styles[gi % len(styles)], label=label)
        ax.set_xlabel("relearning steps")
        ax.set_ylabel(_mlabel(metric))
        ax.set_title(_mlabel(metric))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, out_dir, "relearning_curves")


def _nan0(x: float) -> float:
    return 0.0 if x is None or not math.isfinite(x) else float(x)


def tradeoff(cells: Cells, out_dir: Path) -> list[Path]:
    """Forgetting (x) vs utility (y) of clean models; base and retrain marked as reference points."""
    clean = cells.df[cells.df["attack"] == NONE_ATTACK]
    present = set(clean["metric"])
    fx = primary_forget_metric(cells.df, present)
    uy = next((m for m in UTILITY_PRIORITY if m in present), None)
    if fx is None or uy is None:
        log.info("figure tradeoff skipped: needs a clean forget metric and a utility metric")
        return []
    configs = config_order(clean)
    names, colors = _names(configs), _colors(configs)
    fig, ax = plt.subplots(figsize=(6.6, 4.0))
    plotted = 0
    for c in configs:
        x = cells.cells.get((*c, NONE_ATTACK, DEFAULT_PARAMS, fx))
        y = cells.cells.get((*c, NONE_ATTACK, DEFAULT_PARAMS, uy))
        if x is None or y is None or not x["n"] or not y["n"]:
            continue
        marker, size, color = {"base": ("*", 14, "black"), "retrain": ("D", 8, "tab:green")}.get(
            c[0], ("o", 6, colors[c]))
        ax.errorbar(x["mean"], y["mean"], xerr=_nan0(x["std"]), yerr=_nan0(y["std"]), marker=marker, ms=size,
                    color=color, capsize=2, linestyle="none", label=names[c])
        plotted += 1
    if not plotted:
        plt.close(fig)
        log.info("figure tradeoff skipped: no model has both %s and %s", fx, uy)
        return []
    ax.set_xlabel(f"{_mlabel(fx)} (forget, lower = more forgetting)")
    ax.set_ylabel(f"{_mlabel(uy)} (utility)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, out_dir, "tradeoff")


def attack_heatmaps(cells: Cells, out_dir: Path) -> list[Path]:
    """Attack setting × method heatmaps, one per metric: the primary forget metric and ASR."""
    df = cells.df
    attacked = df[df["attack"] != NONE_ATTACK]
    written: list[Path] = []
    for metric in [primary_forget_metric(df, set(attacked["metric"])), "asr"]:
        if metric is None:
            continue
        sub = df[df["metric"] == metric]
        attacks = sorted({a for a in sub["attack"] if a != NONE_ATTACK}, key=attack_key)
        rows = ([(NONE_ATTACK, DEFAULT_PARAMS)] if (sub["attack"] == NONE_ATTACK).any() else [])
        rows += [(a, s) for a in attacks for s in settings_order(sub, a)]
        configs = config_order(sub)
        if not attacks or not configs:
            log.info("figure attack_heatmap_%s skipped: no attacked results", metric)
            continue
        grid = np.full((len(rows), len(configs)), np.nan)
        for i, (a, s) in enumerate(rows):
            for j, c in enumerate(configs):
                v = cells.value(*c, a, s, metric)
                grid[i, j] = np.nan if v is None else v
        if np.isnan(grid).all():
            log.info("figure attack_heatmap_%s skipped: no values", metric)
            continue
        names = _names(configs)
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(configs), 0.9 + 0.38 * len(rows)))
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap)
        ax.set_xticks(range(len(configs)), [names[c] for c in configs], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), ["clean" if a == NONE_ATTACK else setting_label(a, s) for a, s in rows],
                      fontsize=7)
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(len(rows)):
            for j in range(len(configs)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < mid else "black")
        fig.colorbar(im, ax=ax, label=_mlabel(metric))
        ax.set_title(f"{_mlabel(metric)} under attack (grey: not run)", fontsize=9)
        fig.tight_layout()
        written += _save(fig, out_dir, f"attack_heatmap_{metric}")
    if not written:
        log.info("figure attack_heatmap skipped: no attacked results")
    return written


def prism_ablation_bars(cells: Cells, out_dir: Path) -> list[Path]:
    """Grouped bars of US and its components per PRISM hyperparameter setting."""
    df = cells.df
    sub = df[(df["method"] == "prism") & (df["attack"] == NONE_ATTACK) & df["metric"].isin(US_METRICS)]
    configs = config_order(sub)
    metrics = [m for m in US_METRICS if m in set(sub["metric"])]
    if not configs or not metrics:
        log.info("figure prism_ablation skipped: no PRISM Unlearn Score results")
        return []
    dicts = [parse_params(p) for _, p in configs]
    keys = [k for k in sorted({k for d in dicts for k in d}) if len({d.get(k) for d in dicts}) > 1]
    labels = [", ".join(f"{k}={d.get(k, '·')}" for k in keys) or p for d, (_, p) in zip(dicts, configs)]
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(configs), 3.4))
    for k, metric in enumerate(metrics):
        means, stds = [], []
        for c in configs:
            cell = cells.cells.get((*c, NONE_ATTACK, DEFAULT_PARAMS, metric))
            means.append(cell["mean"] if cell is not None and cell["n"] else np.nan)
            stds.append(_nan0(cell["std"]) if cell is not None and cell["n"] else 0.0)
        xs = np.arange(len(configs)) + (k - (len(metrics) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds if any(stds) else None, capsize=2, label=_mlabel(metric))
    ax.set_xticks(range(len(configs)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (clean)")
    ax.set_title("PRISM ablations", fontsize=9, pad=18)
    ax.legend(fontsize=7, frameon=False, ncol=len(metrics), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "prism_ablation")


# ------------------------------------------------------------------------------------ loss landscape
def load_landscape(path: str | os.PathLike) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Read 1-D loss slices → ``[(label, loss name, alpha, loss)]``.

    Accepted JSON shapes (the computation lives elsewhere):
    ``{"method": m, "alpha": [...], "loss": [...]}``; ``{"method": m, "alpha": [...], "loss": {"forget": [...],
    "retain": [...]}}`` (``losses`` is an alias of ``loss``; ``label`` overrides ``method``); or a mapping
    ``{label: <one of those>}``. The label defaults to the file stem.
    """
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, Mapping):
        raise DataFormatError(f"{path}: expected a JSON object with alpha and loss arrays")
    entries = [(path.stem, doc)] if "alpha" in doc else list(doc.items())
    out = []
    for label, entry in entries:
        if not isinstance(entry, Mapping) or "alpha" not in entry:
            raise DataFormatError(f"{path}: entry {label!r} has no 'alpha' array")
        label = str(entry.get("label") or entry.get("method") or label)
        alpha = np.asarray(entry["alpha"], dtype=float)
        losses = entry.get("loss", entry.get("losses"))
        series = losses.items() if isinstance(losses, Mapping) else [("loss", losses)]
        for split, values in series:
            if values is None:
                raise DataFormatError(f"{path}: entry {label!r} has no loss values")
            values = np.asarray(values, dtype=float)
            if values.shape != alpha.shape or alpha.ndim != 1:
                raise DataFormatError(f"{path}: entry {label!r} loss {split!r} has shape {values.shape}, "
                                      f"alpha has {alpha.shape}")
            out.append((label, str(split), alpha, values))
    return out


def plot_loss_landscape(files: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                        name: str = "loss_landscape") -> list[Path]:
    """Loss along a 1-D direction (α = 0 is the trained model) per method; one panel per loss name."""
    series = [s for f in files for s in load_landscape(f)]
    if not series:
        log.info("figure %s skipped: no landscape data", name)
        return []
    splits = list(dict.fromkeys(s[1] for s in series))
    labels = list(dict.fromkeys(s[0] for s in series))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for label, sp, alpha, loss in series:
            if sp == split:
                order = np.argsort(alpha)
                ax.plot(alpha[order], loss[order], color=cmap(labels.index(label) % 10), label=label)
        ax.axvline(0.0, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("α (step along direction)")
        ax.set_ylabel(f"{split} loss" if split != "loss" else "loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, Path(out_dir), name)


# ------------------------------------------------------------------------------------------- driver
FIGURES = {"relearning_curves": relearning_curves, "tradeoff": tradeoff, "attack_heatmap": attack_heatmaps,
           "prism_ablation": prism_ablation_bars}


def write_figures(df: pd.DataFrame, out_dir: str | os.PathLike,
                  landscape_files: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Every figure whose data is present (PNG + PDF); absent data → logged note; returns written files."""
    out = Path(out_dir)
    written: list[Path] = []
    if df.empty:
        log.info("no figures: empty results")
    else:
        cells = Cells(df)
        for fig_name, fn in FIGURES.items():
            written += fn(cells, out)
    if landscape_files:
        written += plot_loss_landscape(landscape_files, out)
    return written


__all__ = ["write_figures", "plot_loss_landscape", "load_landscape", "primary_forget_metric"]
