"""The README's headline table, made from a run's tidy table so that it is regenerated, never typed in.

    python -m robust_unlearning.report.headline results/synthetic/tables/metrics.csv [--readme README.md]

prints one Markdown table: a column per unlearned method (per hyperparameter setting where a method has several),
rows for forget and retain MCQ accuracy of the clean model, forget MCQ after each relearning setting and under
GCG. A cell is the mean over the seeds that have an ``ok`` row, followed by ``(n=<seeds>)`` when there are
several; a cell whose rows are all failed, diverged or missing reads ``missing`` (never 0, never left out), a
cell the grid does not contain reads ``–``. A caption line gives the base
model's and the retrain oracle's clean values, the references every column is read against. With ``--readme``
the table replaces what lies between the lines ``<!-- headline: start -->`` and ``<!-- headline: end -->`` of
that file (written atomically), with a line naming the run it came from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..utils.io import atomic_write_text
from .common import configuration_names, method_key, params_key, parse_params, readable_label, setting_label

FORGET, RETAIN = "forget_mcq_acc", "retain_mcq_acc"
START, END = "<!-- headline: start -->", "<!-- headline: end -->"


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "–"            # not in the grid (e.g. a method that does not face this attack)
    ok = pd.to_numeric(rows.loc[rows["status"] == "ok", "value"], errors="coerce").dropna()
    if ok.empty:
        return "missing"      # planned, but failed, diverged or could not be computed
    return f"{ok.mean():.2f}" + (f" (n={len(ok)})" if len(ok) > 1 else "")


def headline_table(df: pd.DataFrame) -> str:
    """The Markdown table (caption line, blank line, table) for a tidy ``metrics.csv``."""
    df = df.astype({"params": str, "attack_params": str, "attack": str, "method": str})
    unlearned = df[df["model_id"].astype(str).str.startswith("unlearn/")]
    if unlearned.empty:
        raise ValueError("metrics.csv has no unlearned model (model_id unlearn/...): nothing to tabulate")
    settings = sorted({(m, p) for m, p in zip(unlearned["method"], unlearned["params"])},
                      key=lambda mp: (method_key(mp[0]), " w/o " in readable_label(*mp), params_key(mp[1])))
    names = configuration_names(settings)   # the figures' names: `PRISM w/o probe`, `GA (lr=1e-5)`

    def label(method: str, params: str) -> str:
        return f"**{names[(method, params)]}**" if method == "prism" else names[(method, params)]

    relearn = sorted(unlearned.loc[unlearned["attack"] == "relearn", "attack_params"].unique(),
                     key=lambda p: (float(parse_params(p).get("steps", 0)), params_key(p)))
    gcg = sorted(unlearned.loc[unlearned["attack"] == "gcg", "attack_params"].unique(), key=params_key)
    rows = [("forget MCQ ↓", "none", None, FORGET), ("retain MCQ ↑", "none", None, RETAIN)]
    rows += [(f"forget MCQ after {setting_label('relearn', p)}", "relearn", p, FORGET) for p in relearn]
    rows += [(f"forget MCQ under {setting_label('gcg', p)}", "gcg", p, FORGET) for p in gcg]

    lines = ["| | " + " | ".join(label(m, p) for m, p in settings) + " |",
             "|---|" + "---|" * len(settings)]
    for title, attack, attack_params, metric in rows:
        cells = []
        for method, params in settings:
            sel = unlearned[(unlearned["method"] == method) & (unlearned["params"] == params)
                            & (unlearned["attack"] == attack) & (unlearned["metric"] == metric)]
            if attack_params is not None:
                sel = sel[sel["attack_params"] == attack_params]
            cells.append(_cell(sel))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    def reference(model_id: str, metric: str) -> str:
        return _cell(df[(df["model_id"] == model_id) & (df["attack"] == "none") & (df["metric"] == metric)])

    caption = ("Cloze MCQ accuracy (chance 0.25), clean unless the row names an attack (`–`: not in the grid); "
               f"base model {reference('models/base', FORGET)} forget / {reference('models/base', RETAIN)} retain, "
               f"retrain oracle {reference('models/retrain', FORGET)} / {reference('models/retrain', RETAIN)}.")
    ok = unlearned[unlearned["status"] == "ok"]
    if ok.groupby(["method", "params"])["seed"].nunique().max() == 1:   # say so: a lone number has no spread
        caption += (" One seed per cell, so no interval: differences of a few hundredths are not resolved "
                    "(seed intervals and paired tests: `tables/paired.csv` of a multi-seed run, e.g. `make study`).")
    else:
        caption += " Mean over seeds (n shown); intervals and paired tests: `tables/paired.csv`."
    return caption + "\n\n" + "\n".join(lines) + "\n"


def replace_block(text: str, block: str, where: str = "the file") -> str:
    """``text`` with the lines between the START and END marker lines replaced by ``block``."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.strip() == START]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{where} needs exactly one line {START!r} followed by one line {END!r}")
    return "".join(lines[:starts[0] + 1]) + block.rstrip("\n") + "\n" + "".join(lines[ends[0]:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robust_unlearning.report.headline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics_csv", help="a run's tidy table, e.g. results/synthetic/tables/metrics.csv")
    parser.add_argument("--readme", metavar="FILE", help="write the table between the headline markers of FILE "
                        "(e.g. README.md) instead of printing it")
    args = parser.parse_args(argv)
    try:
        df = pd.read_csv(args.metrics_csv, keep_default_na=False)
        table = headline_table(df)
    except (OSError, ValueError, KeyError) as err:
        print(f"{args.metrics_csv}: {err}", file=sys.stderr)
        return 1
    if not args.readme:
        sys.stdout.write(table)
        return 0
    readme = Path(args.readme)
    try:
        source = f"<!-- made by: python -m robust_unlearning.report.headline {args.metrics_csv} --readme {readme} -->"
        atomic_write_text(readme, replace_block(readme.read_text(encoding="utf-8"), source + "\n" + table,
                                                str(readme)))
    except (OSError, ValueError) as err:
        print(f"{readme}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
