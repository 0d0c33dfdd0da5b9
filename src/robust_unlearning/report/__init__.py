"""Reporting: tidy CSV, Markdown/LaTeX tables and figures from a results tree.

Reads only ``metrics.json`` / ``run.json`` files (docs/architecture.md, "File contracts"); never imports ``methods`` or ``attacks``.
Entry points (imported lazily so that ``import robust_unlearning.report`` does not load matplotlib):
``collect.collect_results``, ``tables.write_tables``, ``figures.write_figures``, ``build.build_report``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "collect_results": "robust_unlearning.report.collect",
    "write_csv": "robust_unlearning.report.collect",
    "write_tables": "robust_unlearning.report.tables",
    "write_figures": "robust_unlearning.report.figures",
    "plot_loss_landscape": "robust_unlearning.report.figures",
    "build_report": "robust_unlearning.report.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robust_unlearning.report' has no attribute {name!r}")
