"""Attack throughput benchmark: returns both numbers side by side; batching is not slower than the loop."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_attacks_support import one_thread  # noqa: E402,F401  (autouse fixture)

from robust_unlearning.attacks.bench import bench_attacks


def test_bench_attacks_reports_batched_and_unbatched(micro_model, tiny_tokenizer):
    res = bench_attacks(micro_model, tiny_tokenizer, n_items=2, n_candidates=16, n_tokens=3, population=6, repeats=1)
    for key in ("gcg_candidates_per_s", "gcg_candidates_per_s_unbatched", "genetic_candidates_per_s",
                "genetic_candidates_per_s_unbatched"):
        assert res[key] > 0
    assert res["gcg_speedup"] > 1.0
    assert res["settings"]["n_candidates"] == 16
