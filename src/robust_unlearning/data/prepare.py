"""`prepare_data`: materialise a benchmark into the one on-disk format (docs/benchmarks.md, "On-disk format")."""
from __future__ import annotations

from pathlib import Path


def prepare_benchmark(bench_cfg: dict, out: Path) -> dict:
    name = bench_cfg["name"]
    if name == "synthetic":
        from .synthetic import generate_world

        return generate_world(out, seed=int(bench_cfg.get("seed", 0)), size=bench_cfg.get("size", "default"))
    if name in ("muse_news", "muse_books"):
        from .muse import prepare_muse

        return prepare_muse(name, bench_cfg, out)
    if name == "wmdp_dialogue":
        from .wmdp import prepare_wmdp_dialogue

        return prepare_wmdp_dialogue(bench_cfg, out)
    raise ValueError(f"benchmark.name: unknown benchmark {name!r}")
