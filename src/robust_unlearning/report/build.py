"""One call for the ``aggregate`` rule: collect a results tree, write its tables and figures."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from robust_unlearning.report.collect import collect_results
from robust_unlearning.report.figures import write_figures
from robust_unlearning.report.tables import write_tables

log = logging.getLogger(__name__)


def build_report(bench_dir: str | os.PathLike, benchmark: str, expected: Iterable[Any] | None = None,
                 landscape_files: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """``results/<bench>/tables/*`` and ``results/<bench>/figures/*``; returns every written file."""
    bench = Path(bench_dir)
    df = collect_results(bench, benchmark, expected)
    written = write_tables(df, bench / "tables")
    from robust_unlearning.report.paired import write_paired_tables   # intervals.csv, paired.csv (any seeds)
    written += write_paired_tables(df, bench / "tables")
    written += write_figures(df, bench / "figures", landscape_files=landscape_files)
    n_bad = int((df["status"] != "ok").sum()) if not df.empty else 0
    log.info("report for %s: %d rows (%d not ok), %d files", benchmark, len(df), n_bad, len(written))
    return written
