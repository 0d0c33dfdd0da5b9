"""Cost metering of a training run: forward/backward pass counters, memory, and the ``cost`` block of run.json."""
from __future__ import annotations

import resource
import statistics
from typing import Any, Sequence

import torch


class Counters(dict):
    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return peak_memory_mb(device)


def run_cost(rows: Sequence[dict], counters: dict, setup_counters: dict, setup_s: float, device: torch.device,
             dtype: torch.dtype, b_eff: int, batch_size: int, grad_accum: int, processes: int = 1,
             distributed: str | None = None) -> dict[str, Any]:
    """Median step time (the first five steps are warm-up), throughput, peak memory and passes per step.
    With several processes: passes summed over them, peak memory of process 0's device."""
    times = [r["step_time_s"] for r in rows if "step_time_s" in r]
    tail = times[5:] if len(times) > 5 else times
    tokens = sum(r.get("tokens", 0) for r in rows)
    n = max(len(rows), 1)
    return {"s_per_step": statistics.median(tail) if tail else None,
            "tokens_per_s": tokens / sum(times) if times and sum(times) > 0 else None,
            "peak_mem_mb": peak_memory_mb(device), "steps": len(rows),
            "effective_batch": b_eff * 1, "per_device_batch": batch_size,
            "grad_accum": grad_accum, "processes": processes,
            **({"distributed": distributed} if distributed else {}),
            "passes": dict(counters), "passes_per_step": {k: v / n for k, v in counters.items()},
            "setup_passes": setup_counters, "setup_s": setup_s,
            "device": str(device), "dtype": str(dtype)}
