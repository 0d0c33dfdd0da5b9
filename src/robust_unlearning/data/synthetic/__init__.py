"""The embedded synthetic fictional-world benchmark (docs/benchmarks.md, "The synthetic world").

Entirely invented pathogens (forget / holdout), towns and people (retain1 / retain2), a refusal pool and a
format pool, written in exactly the on-disk formats of MUSE, WMDP/MMLU, PRISM dialogues and the jailbreak
files, plus the base-training mixtures. ``generate_world`` is a pure function of (seed, size, version).
"""
from .generate import build_files, contains_alias, generate_world
from .world import GENERATOR_VERSION, SIZES, build_world, get_preset

__all__ = ["generate_world", "build_world", "build_files", "contains_alias", "GENERATOR_VERSION", "SIZES",
           "get_preset"]
