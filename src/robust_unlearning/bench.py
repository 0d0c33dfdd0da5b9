"""`make bench`: speed and memory measured side by side in one process on the embedded tiny model.

Writes results/bench/methods.json ({method: {"step_ratio_vs_npo_gdr", "peak_mem_mb", ...}}), eval.json
({"mcq_speedup", "generation_speedup", ...}) and attacks.json (GCG / genetic-search candidates per second).
Speed depends on weights only through their shapes, so a freshly initialised tiny Llama is used.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--preset", default="tiny-llama")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per method")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    from .attacks.bench import bench_attacks
    from .data.formats import Benchmark
    from .data.synthetic import generate_world
    from .data.unlearning_sets import build_examples
    from .methods.bench import bench_methods
    from .metrics.bench import bench_eval
    from .models.architectures import build_llama
    from .models.cache import corpus_for_tokenizer
    from .models.tokenizer import train_bpe_tokenizer
    from .utils.io import atomic_write_json
    from .utils.repro import configure_threads, hardware

    threads = configure_threads(args.threads)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_world(data, seed=0, size="tiny")
        bench = Benchmark(data)
        tok = train_bpe_tokenizer(corpus_for_tokenizer(data), vocab_size=1000)
        model = build_llama(tok, preset=args.preset, seed=0)
        forget = build_examples(bench, tok, "forget", "raw", 256)
        retain = build_examples(bench, tok, "retain", "raw", 256)
        context = {"preset": args.preset, "n_params": sum(p.numel() for p in model.parameters()),
                   "threads": threads, "hardware": hardware()}

        methods = bench_methods(model, tok, forget, retain, steps=args.steps, batch_size=args.batch_size)
        atomic_write_json(out / "methods.json", methods)
        print(f"{'method':<14}{'s/step':>10}{'× NPO+GDR':>12}{'peak MB':>10}")
        for name, row in methods.items():
            print(f"{name:<14}{row.get('s_per_step', float('nan')):>10.4f}{row['step_ratio_vs_npo_gdr']:>12.2f}"
                  f"{row['peak_mem_mb']:>10.1f}")

        model = build_llama(tok, preset=args.preset, seed=0)
        evals = bench_eval(model, tok, bench, n_items=32)
        atomic_write_json(out / "eval.json", evals)
        print(json.dumps({k: round(v, 3) for k, v in evals.items()}, indent=1))

        attacks = bench_attacks(model, tok)
        atomic_write_json(out / "attacks.json", attacks)
        print(json.dumps(attacks, indent=1, default=str))
        atomic_write_json(out / "context.json", context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
