#!/usr/bin/env python3
"""Apply the sweep's selection criterion (workflow/presets/synthetic_sweep.yaml) to a finished sweep's tables.

    PYTHONPATH=src python workflow/scripts/select_calibration.py results/synthetic_sweep/synthetic/tables \
        sam_npo:rho=0.01 prism:rho=0.01,gamma_target=1

Each ``method:key=value,...`` names a method and its paper-closest setting (kept unless a change is earned).
Prints, per method, the table of settings (clean retain MCQ, forget MCQ after relearning, utility gate) and the
choice with its reason, as markdown (docs/findings.md, "Calibrating ρ and γ", is this output).
The rule itself is robust_unlearning.report.calibration (its docstring states it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from robust_unlearning.report.calibration import Criterion, choice_markdown, choose_setting


def _method_spec(text: str) -> tuple[str, dict[str, str]]:
    method, sep, rest = text.partition(":")
    if not sep or not method or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected method:key=value[,key=value...]")
    wanted = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise argparse.ArgumentTypeError(f"{text!r}: {item!r} is not key=value")
        wanted[key.strip()] = value.strip()
    return method, wanted


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", type=Path, help="the sweep's tables/ folder (intervals.csv, paired.csv)")
    ap.add_argument("methods", nargs="+", type=_method_spec, help="method:key=value,... (the paper-closest)")
    ap.add_argument("--attack-params", default=Criterion.attack_params,
                    help=f"relearning setting of the robustness number (default {Criterion.attack_params})")
    ap.add_argument("--tolerance", type=float, default=Criterion.utility_tolerance,
                    help=f"utility gate below the reference (default {Criterion.utility_tolerance})")
    args = ap.parse_args(argv)
    for name in ("intervals.csv", "paired.csv"):
        if not (args.tables / name).is_file():
            ap.error(f"{args.tables / name}: no such file (run the sweep's aggregate first)")
    intervals = pd.read_csv(args.tables / "intervals.csv", dtype={"params": str, "attack_params": str})
    paired = pd.read_csv(args.tables / "paired.csv", dtype={"params_a": str, "params_b": str,
                                                             "attack_params": str})
    criterion = Criterion(attack_params=args.attack_params, utility_tolerance=args.tolerance)
    for method, closest in args.methods:
        try:
            choice = choose_setting(intervals, paired, method, closest, criterion)
        except ValueError as e:
            print(f"select_calibration: {e}", file=sys.stderr)
            return 2
        print(choice_markdown(choice, criterion) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
