"""Side-by-side cost of every method in one process (PRISM ≤ 1.5× NPO+GDR at equal batch: docs/methods.md,
"Cost model").

All trainers are built first (same model copy, data, batch, seed) and then stepped round-robin, so that load
drift on a shared machine hits every method alike; on CPU the step time is process CPU time. The ratio is median step time / median step time of NPO+GDR
(both with the reference cached), computed from the *minimum* step time over the measured steps: on a shared
machine contention only ever adds time, so the minimum is the least disturbed estimate (medians are reported too). ``state_mem_mb`` counts the persistent tensors a method holds (parameters,
gradients, spare buffer, optimizer states, frozen copy); ``peak_mem_mb`` is the CUDA peak per method on GPU and
the process-wide ru_maxrss on CPU.
"""
from __future__ import annotations

import copy
import statistics
from typing import Any, Sequence

import torch

from .loop import Trainer, TrainConfig, peak_memory_mb
from .probe import Probe
from .runner import build_method

BENCH_METHODS: dict[str, dict] = {
    "ga": {"method": "ga", "params": {}},
    "graddiff": {"method": "graddiff", "params": {}},
    "npo": {"method": "npo", "params": {"retain_loss": "none"}},
    "npo_gdr": {"method": "npo", "params": {"retain_loss": "gdr"}},
    "simnpo": {"method": "simnpo", "params": {}},
    "rmu": {"method": "rmu", "params": {}},
    "sam_npo": {"method": "sam_npo", "params": {}},
    "prism": {"method": "prism", "params": {"gamma_schedule": "constant"}},
    "task_vector": {"method": "task_vector", "params": {}},
}


def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)) / 2**20


def _state_mb(tr: Trainer) -> float:
    ts = list(tr.params) * 2  # parameters + their gradients (freed between steps, alive during one)
    ts += list(tr._buffer or [])
    for st in tr.optimizer.state.values():
        ts += [v for v in st.values() if torch.is_tensor(v)]
    if tr.ref_model is not None:
        ts += list(tr.ref_model.parameters())
    return _tensor_mb(ts)


def bench_methods(model, tokenizer, forget: Sequence[dict], retain: Sequence[dict], steps: int, batch_size: int,
                  methods: Sequence[str] | None = None, warmup: int = 1, seed: int = 0,
                  train_cfg: dict | None = None) -> dict[str, dict[str, Any]]:
    """{method: {"step_ratio_vs_npo_gdr", "s_per_step", "peak_mem_mb", "state_mem_mb", "passes_per_step"}}."""
    names = list(methods or BENCH_METHODS)
    if "npo_gdr" not in names:
        names.append("npo_gdr")
    tc = TrainConfig.from_dict({"steps": steps + warmup, "batch_size": batch_size, "progress": False,
                                **(train_cfg or {})})
    hidden = int(model.config.hidden_size)
    n_layers = int(model.config.num_hidden_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = Probe(hidden)
    probe_meta = {"layer": n_layers, "pooling": "mean", "in_dim": hidden}
    trainers: dict[str, Trainer] = {}
    for name in names:
        spec = BENCH_METHODS[name]
        m = build_method(spec["method"], spec["params"])
        tr = Trainer(copy.deepcopy(model), tokenizer, m, tc, forget, retain, seed,
                     device=str(next(model.parameters()).device), probe=(copy.deepcopy(probe), probe_meta))
        trainers[name] = tr
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {n: 0.0 for n in names}
    for step in range(steps + warmup):
        for name, tr in trainers.items():
            dev = tr.device
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            row = tr.train_step(step)
            if step >= warmup:  # CPU time on CPU (robust to other processes on a shared machine), wall on GPU
                times[name].append(row["step_time_s"] if dev.type == "cuda" else row["step_cpu_s"])
            peaks[name] = max(peaks[name], peak_memory_mb(dev))
    base, base_med = min(times["npo_gdr"]), statistics.median(times["npo_gdr"])
    out = {}
    for name, tr in trainers.items():
        best, med = min(times[name]), statistics.median(times[name])
        n = max(len(tr.rows), 1)
        out[name] = {"step_ratio_vs_npo_gdr": best / base if base > 0 else float("nan"),
                     "step_ratio_median": med / base_med if base_med > 0 else float("nan"),
                     "s_per_step": best, "s_per_step_median": med,
                     "peak_mem_mb": peaks[name], "state_mem_mb": _state_mb(tr),
                     "passes_per_step": {k: v / n for k, v in tr.counters.items()}}
    return out
