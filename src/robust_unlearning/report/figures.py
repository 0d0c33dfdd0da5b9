"""Figures from the tidy frame (matplotlib, Agg backend; each figure as PNG and PDF, written atomically).

A figure whose data is absent is skipped with a logged note, never an error; :func:`write_figures`
returns the files it wrote. Files: ``relearning_curves``, ``tradeoff``, ``attack_heatmap_<metric>``,
``prism_ablation``, ``training_terms`` (from the runs' ``train_log.jsonl``), and ``loss_landscape`` when
precomputed 1-D slices are given.

Every figure names a configuration the same way (``PRISM w/o probe``, not its parameter string; the raw
parameters stay in the CSV) and draws it with the same colour and marker, fixed over the whole results tree.
Bands and error bars are 95 % t-intervals over seeds (report/paired.py), absent with one seed.
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
    DEFAULT_PARAMS, METRIC_LABELS, NONE_ATTACK, US_METRICS, attack_key, config_order, configuration_names,
    parse_params, readable_label, setting_label, settings_order)
from robust_unlearning.report.tables import Cells, forget_metrics  # noqa: E402
from robust_unlearning.utils.io import DataFormatError, read_json  # noqa: E402

log = logging.getLogger(__name__)

FORGET_PRIORITY = ["forget_mcq_acc", "forget_verbmem", "forget_knowmem", "forget_mcq_acc_letter"]
FORGET_PRIORITY_WMDP = ["forget_mcq_acc_letter", "forget_mcq_acc", "forget_knowmem", "forget_verbmem"]
# utility axis: retain MCQ on the synthetic world (its KnowMem_r is ~0 for a small model), KnowMem_r on MUSE,
# general MCQ (MMLU) on WMDP
UTILITY_PRIORITY = ["retain_mcq_acc", "general_mcq_acc", "retain_mcq_acc_letter", "us_utility", "retain_knowmem"]
UTILITY_PRIORITY_MUSE = ["retain_knowmem", "us_utility", "retain_mcq_acc"]
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


# distinct colours (tab10 without its grey, then Dark2); black and grey are the base and retrain references
_PALETTE = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)] + \
    [plt.get_cmap("Dark2")(i) for i in range(8)]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "h", "<", ">", "p", "*"]
_REFERENCE = {"base": ("black", "*"), "retrain": ("dimgrey", "D")}


def _styles(configs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, str]]:
    """(colour, marker) per configuration: one colour per readable label (a method or an ablation; its settings,
    e.g. an lr sweep, share it and differ in marker), no two configurations share both; references fixed."""
    out: dict = {}
    colour_of: dict[str, Any] = {}
    used: set = set()
    i = 0
    for c in configs:
        if c[0] in _REFERENCE:
            out[c] = _REFERENCE[c[0]]
            continue
        label = readable_label(*c)
        if label not in colour_of:
            colour_of[label] = _PALETTE[len(colour_of) % len(_PALETTE)]
        colour, shift, tries = colour_of[label], 0, 0
        while (tuple(colour), _MARKERS[i % len(_MARKERS)]) in used:
            i, tries = i + 1, tries + 1
            if tries >= len(_MARKERS):   # every marker taken in this colour: the next colour of the palette
                shift, tries = shift + 1, 0
                colour = _PALETTE[(_PALETTE.index(colour_of[label]) + shift) % len(_PALETTE)]
        marker = _MARKERS[i % len(_MARKERS)]
        used.add((tuple(colour), marker))
        out[c] = (colour, marker)
        i += 1
    return out


def _colors(configs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    return {c: st[0] for c, st in _styles(configs).items()}


def _half_ci(cell) -> float:
    """Half-width of the 95 % t-interval of a pooled cell (0 with one seed: no band)."""
    from robust_unlearning.report.paired import t975

    n = int(cell["n"]) if cell is not None else 0
    if n < 2 or cell["std"] is None or not math.isfinite(cell["std"]):
        return 0.0
    return t975(n - 1) * float(cell["std"]) / math.sqrt(n)


def primary_forget_metric(df: pd.DataFrame, candidates: Iterable[str] | None = None) -> str | None:
    """The forget metric a single-metric figure shows: MCQ (synthetic), VerbMem (MUSE), letter MCQ (WMDP)."""
    present = set(df["metric"]) if candidates is None else set(candidates)
    bench = str(df["benchmark"].iat[0]).lower() if not df.empty else ""
    order = FORGET_PRIORITY_WMDP if "wmdp" in bench else FORGET_PRIORITY
    return next((m for m in order if m in present), None)


def _mlabel(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# ------------------------------------------------------------------------------------------- figures
def relearning_curves(cells: Cells, out_dir: Path, styles=None) -> list[Path]:
    """The primary forget metric vs relearning steps (0 = clean), one panel per relearning subset (fraction or
    other non-step parameters), one line per configuration with its 95 % seed band. Where some configurations
    have a curve (two or more relearning points in the panel), those that faced a single point (a study's
    lr-sweep points and ablations, ``attack_with: ["relearn:steps=20"]``) are left out: they are in tradeoff.png."""
    sub = cells.df[cells.df["attack"] == "relearn"]
    settings = [s for s in settings_order(cells.df, "relearn") if "steps" in parse_params(s)]
    metric = primary_forget_metric(cells.df, set(sub["metric"]) - {"asr"})
    if sub.empty or not settings or metric is None:
        log.info("figure relearning_curves skipped: no relearning results with a steps parameter")
        return []
    configs = [c for c in config_order(sub) if c in set(zip(sub["method"], sub["params"]))]
    styles = styles or _styles(configs)
    names = configuration_names(configs)
    groups: dict[str, list[tuple[float, str]]] = {}  # other params (fraction …) → [(steps, setting)]
    for s in settings:
        d = parse_params(s)
        steps = float(d.pop("steps"))
        groups.setdefault(", ".join(f"{k}={v}" for k, v in sorted(d.items())), []).append((steps, s))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.4), squeeze=False, sharey=True)
    for ax, (gname, pts) in zip(axes[0], sorted(groups.items())):
        lines = {}
        for c in configs:
            xs, ys, hs = [], [], []
            clean = cells.cells.get((*c, NONE_ATTACK, DEFAULT_PARAMS, metric))
            if clean is not None and clean["n"]:
                xs.append(0.0), ys.append(clean["mean"]), hs.append(_half_ci(clean))
            n_attacked = 0
            for steps, s in sorted(pts):
                cell = cells.cells.get((*c, "relearn", s, metric))
                if cell is not None and cell["n"]:
                    xs.append(steps), ys.append(cell["mean"]), hs.append(_half_ci(cell))
                    n_attacked += 1
            lines[c] = (xs, ys, hs, n_attacked)
        most = max((v[3] for v in lines.values()), default=0)
        for c, (xs, ys, hs, n_attacked) in lines.items():
            if n_attacked == 0 or (most >= 2 and n_attacked < 2):
                continue
            color, marker = styles[c]
            xs, ys, hs = np.array(xs), np.array(ys), np.array(hs)
            ax.plot(xs, ys, marker=marker, ms=4, color=color, label=names[c])
            if hs.any():
                ax.fill_between(xs, ys - hs, ys + hs, color=color, alpha=0.15, lw=0)
        ax.set_xlabel("relearning steps (0 = before the attack)")
        ax.set_title(f"relearn on {gname}" if gname else "relearning", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{_mlabel(metric)} (forget; higher = knowledge recovered)")
    handles, labels = [], []
    for ax in axes[0]:                      # every panel's lines, once each
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h), labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, out_dir, "relearning_curves")


def utility_metric(df: pd.DataFrame, present: Iterable[str]) -> str | None:
    """The utility axis: retain MCQ (synthetic), KnowMem_r (MUSE), general MCQ (WMDP)."""
    present = set(present)
    bench = str(df["benchmark"].iat[0]).lower() if not df.empty else ""
    order = UTILITY_PRIORITY_MUSE if "muse" in bench else UTILITY_PRIORITY
    return next((m for m in order if m in present), None)


def _strongest_relearn(cells: Cells, metric: str, method: str | None = None) -> str | None:
    """The relearning setting that the most configurations faced (a study may give its lr-sweep points one
    setting of the curve: ``attack_with: ["relearn:steps=20,fraction=1"]``), then the one with the most steps,
    then the largest subset; None without relearning."""
    sub = cells.df[(cells.df["attack"] == "relearn") & (cells.df["metric"] == metric)]
    if method is not None:            # the configurations of one method only
        sub = sub[sub["method"] == method]
    coverage = sub.drop_duplicates(["method", "params", "setting"]).groupby("setting").size()
    best = None
    for s in set(sub["setting"]):
        d = parse_params(s)
        try:
            key = (int(coverage.get(s, 0)), float(d.get("steps", 0)), float(d.get("fraction", d.get("n", 0))))
        except ValueError:
            continue
        if best is None or key > best[0]:
            best = (key, s)
    return best[1] if best else None


def tradeoff(cells: Cells, out_dir: Path, styles=None) -> list[Path]:
    """Utility (y) against forgetting (x): clean, and after the strongest relearning attack. Configurations of
    the same method (e.g. an lr sweep) are joined into a frontier; error bars are 95 % seed intervals."""
    clean = cells.df[cells.df["attack"] == NONE_ATTACK]
    present = set(clean["metric"])
    fx = primary_forget_metric(cells.df, present)
    uy = utility_metric(cells.df, present)
    if fx is None or uy is None:
        log.info("figure tradeoff skipped: needs a clean forget metric and a utility metric")
        return []
    configs = config_order(clean)
    names, styles = configuration_names(configs), styles or _styles(configs)
    relearn = _strongest_relearn(cells, fx)
    panels = [(NONE_ATTACK, DEFAULT_PARAMS, f"{_mlabel(fx)} clean")]
    if relearn is not None:
        panels.append(("relearn", relearn, f"{_mlabel(fx)} after {setting_label('relearn', relearn)}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False, sharey=True)
    plotted = 0
    for ax, (attack, setting, xlabel) in zip(axes[0], panels):
        frontier: dict[str, list[tuple[float, float]]] = {}
        for c in configs:
            x = cells.cells.get((*c, attack, setting, fx))
            y = cells.cells.get((*c, NONE_ATTACK, DEFAULT_PARAMS, uy))
            if x is None or y is None or not x["n"] or not y["n"]:
                continue
            color, marker = styles[c]
            ax.errorbar(x["mean"], y["mean"], xerr=_half_ci(x), yerr=_half_ci(y), marker=marker,
                        ms=10 if marker == "*" else 6, color=color, capsize=2, linestyle="none", label=names[c])
            if c[0] not in _REFERENCE:
                frontier.setdefault(readable_label(*c), []).append((x["mean"], y["mean"], color))
            plotted += 1
        for pts in frontier.values():
            if len(pts) > 1:
                pts.sort(key=lambda p: p[1])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=pts[0][2], lw=0.8, alpha=0.6)
        ax.set_xlabel(f"{xlabel} (lower = more forgotten)", fontsize=8)
        ax.grid(alpha=0.3)
    if not plotted:
        plt.close(fig)
        log.info("figure tradeoff skipped: no model has both %s and %s", fx, uy)
        return []
    axes[0][0].set_ylabel(f"{_mlabel(uy)} (utility, higher = kept)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
        names = configuration_names(configs)
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
    """Grouped bars per PRISM setting (full method, ablations, lr points): the benchmark's primary numbers, i.e.
    clean forget metric, clean utility and the forget metric after the relearning setting every setting faced,
    with 95 % seed intervals; the Unlearn Score and its components where those primary numbers are absent."""
    df = cells.df
    prism = df[df["method"] == "prism"]
    clean = prism[prism["attack"] == NONE_ATTACK]
    present = set(clean["metric"])
    fx, uy = primary_forget_metric(df, present), utility_metric(df, present)
    if fx is not None and uy is not None:          # bars: (attack, setting, metric, label)
        bars = [(NONE_ATTACK, DEFAULT_PARAMS, fx, f"{_mlabel(fx)} clean ↓"),
                (NONE_ATTACK, DEFAULT_PARAMS, uy, f"{_mlabel(uy)} clean ↑")]
        relearn = _strongest_relearn(cells, fx, method="prism")
        if relearn is not None:
            bars.append(("relearn", relearn, fx, f"{_mlabel(fx)} after {setting_label('relearn', relearn)} ↓"))
    else:
        bars = [(NONE_ATTACK, DEFAULT_PARAMS, m, _mlabel(m)) for m in US_METRICS if m in present]
    configs = config_order(clean)

    def cell(c, attack, setting, metric):
        x = cells.cells.get((*c, attack, setting, metric))
        return x if x is not None and x["n"] and np.isfinite(x["mean"]) else None

    bars = [b for b in bars if any(cell(c, *b[:3]) for c in configs)]
    if not configs or not bars:
        log.info("figure prism_ablation skipped: no PRISM result with a finite primary metric or Unlearn Score")
        return []
    names = configuration_names(configs)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(configs), 3.4))
    for k, (attack, setting, metric, label) in enumerate(bars):
        found = [cell(c, attack, setting, metric) for c in configs]
        means = [x["mean"] if x else np.nan for x in found]
        errs = [_half_ci(x) if x else 0.0 for x in found]
        xs = np.arange(len(configs)) + (k - (len(bars) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=errs if any(errs) else None, capsize=2, label=label)
    ax.set_xticks(range(len(configs)), [names[c] for c in configs], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy / score (95 % seed interval)")
    ax.set_title("PRISM and its ablations", fontsize=9, pad=18)
    ax.legend(fontsize=7, frameon=False, ncol=len(bars), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "prism_ablation")


# ------------------------------------------------------------------------------------ training terms
#: (log key, panel title, y scale) of the per-step terms of the gradient methods (methods/sam.py, prism.py)
TERM_PANELS = [("probe_grad_ratio", "‖γ·∇L_probe‖ / ‖∇L_NPO‖", "linear"),
               ("gnorm_npo", "‖∇L_NPO‖", "log"),
               ("sam_loss_gain", "SAM loss gain ℓ_f(θ+δ) − ℓ_f(θ)", "linear"),
               ("gcd_removed_fraction", "share of g_f removed by GCD", "linear"),
               ("cos_fr", "cos(g_f, g_r)", "linear")]


def read_train_logs(bench_dir: str | os.PathLike) -> pd.DataFrame:
    """Long frame ``method, params, seed, step, key, value`` of every ``unlearn/<m>/<p>/seed~<s>/train_log.jsonl``
    (the TERM_PANELS keys only; unreadable files are logged and skipped)."""
    import json

    rows = []
    keys = {k for k, _, _ in TERM_PANELS}
    for path in sorted(Path(bench_dir).glob("unlearn/*/*/seed~*/train_log.jsonl")):
        method, params, seed = path.parts[-4], path.parts[-3], path.parts[-2][len("seed~"):]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            recs = [json.loads(x) for x in lines if x.strip()]
        except (OSError, ValueError) as exc:
            log.warning("training_terms: %s unreadable (%s); skipped", path, exc)
            continue
        for r in recs:
            for k in keys & set(r):
                try:
                    v = float(r[k])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(v):
                    rows.append((method, params, seed, int(r.get("step", 0)), k, v))
    return pd.DataFrame(rows, columns=["method", "params", "seed", "step", "key", "value"])


def training_terms(logs: pd.DataFrame, out_dir: Path, styles=None) -> list[Path]:
    """Each update term over training, one line per configuration (mean over seeds, 95 % band)."""
    from robust_unlearning.report.paired import t975

    if logs.empty:
        log.info("figure training_terms skipped: no train_log.jsonl with per-term entries")
        return []
    panels = [p for p in TERM_PANELS if (logs["key"] == p[0]).any()]
    configs = config_order(logs)
    names, styles = configuration_names(configs), styles or _styles(configs)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (key, title, scale) in zip(axes.flat, panels):
        sub = logs[logs["key"] == key]
        for c in configs:
            cs = sub[(sub["method"] == c[0]) & (sub["params"] == c[1])]
            if cs.empty:
                continue
            g = cs.groupby("step")["value"].agg(["mean", "std", "count"]).sort_index()
            half = np.array([t975(int(n) - 1) * sd / math.sqrt(n) if n > 1 and math.isfinite(sd) else 0.0
                             for sd, n in zip(g["std"], g["count"])])
            color, marker = styles.get(c, ("black", "o"))
            x, y = g.index.to_numpy(dtype=float), g["mean"].to_numpy()
            ax.plot(x, y, color=color, marker=marker, ms=3, markevery=max(1, len(x) // 8), lw=1.0, label=names[c])
            if half.any():
                ax.fill_between(x, y - half, y + half, color=color, alpha=0.15, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    found = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            found.setdefault(lab, h)
    order = [names[c] for c in configs if names[c] in found]            # table order, not panel order
    fig.legend([found[lab] for lab in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               frameon=False)
    fig.tight_layout()
    return _save(fig, out_dir, "training_terms")


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
                  landscape_files: Iterable[str | os.PathLike] | None = None,
                  bench_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every figure whose data is present (PNG + PDF); absent data → logged note; returns written files.

    ``bench_dir``: the results tree whose ``unlearn/*/*/seed~*/train_log.jsonl`` feed ``training_terms``
    (default: the parent of ``out_dir``, i.e. ``results/<bench>/figures`` → ``results/<bench>``)."""
    out = Path(out_dir)
    written: list[Path] = []
    logs = read_train_logs(bench_dir if bench_dir is not None else out.parent)
    # one (colour, marker) per configuration over the whole tree, so a method looks the same in every figure
    frames = [d[["method", "params"]] for d in (df, logs) if not d.empty]
    styles = _styles(config_order(pd.concat(frames))) if frames else {}
    if df.empty:
        log.info("no figures: empty results")
    else:
        cells = Cells(df)
        for fig_name, fn in FIGURES.items():
            written += fn(cells, out, styles=styles) if fig_name in ("relearning_curves", "tradeoff") \
                else fn(cells, out)
    written += training_terms(logs, out, styles=styles)
    if landscape_files:
        written += plot_loss_landscape(landscape_files, out)
    return written


__all__ = ["write_figures", "plot_loss_landscape", "load_landscape", "primary_forget_metric", "readable_label",
           "read_train_logs", "training_terms", "utility_metric"]
