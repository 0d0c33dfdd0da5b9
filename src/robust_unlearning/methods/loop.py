"""The one training loop of every gradient method (docs/architecture.md, "The training loop"; docs/methods.md).

A method supplies ``prepare(setup)`` (reference caches, frozen copies, parameter selection) and ``step(ctx)``,
which leaves the final combined gradient in ``.grad`` using the helpers of :mod:`.gradients`
(``ctx.accumulate`` for phase-wise accumulation, SAM perturb/restore, GCD). The loop owns everything else:
seeded batching, device/dtype, LoRA and gradient checkpointing, clipping, AdamW and the LR schedule, the NaN
guard, the per-step log, cost metering, and checkpoint/resume on SIGTERM/SIGINT.

Its parts live in their own modules and are re-exported here:

- :mod:`.train_config`: ``TrainConfig`` / ``LoraConfig`` and the LR schedule;
- :mod:`.batching`: micro-batches and the data order, a pure function of (seed, step);
- :mod:`.contexts`: ``Setup`` (seen by ``prepare``) and ``StepContext`` (seen by ``step``);
- :mod:`.wrapping`: LoRA and gradient checkpointing on and off;
- :mod:`.metering`: pass counters, memory, the ``cost`` block of run.json;
- :mod:`.resume`: checkpoint/resume (with model, optimizer, scheduler and RNG states restored, a resumed CPU
  run is bit-identical to an uninterrupted one);
- :mod:`.preemption`: the SIGTERM/SIGINT guard and :class:`Preempted`.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..models.io import resolve_dtype
from ..utils.faults import at as fault_point
from ..utils.repro import derive_seed, pick_device, seed_everything
from . import checkpoint as ckpt
from . import batching, distributed, resume
from .batching import MicroBatch, examples_sha256, make_microbatch, split_microbatches  # noqa: F401 (re-export)
from .batching import truncate_examples as _truncate
from .contexts import Setup, StepContext, decoder_layers  # noqa: F401 (re-export)
from .gradients import NonFiniteLoss, clip_grads
from .gradients import combine_gcd, gcd_coefficients, global_norm, grad_stats, project_out  # noqa: F401 (re-export)
from .gradients import sam_perturb, sam_restore  # noqa: F401 (re-export)
from .metering import Counters, current_memory_mb, peak_memory_mb, run_cost  # noqa: F401 (re-export)
from .preemption import Preempted, SignalGuard
from .resume import input_fingerprint, jsonable as _jsonable
from .train_config import LoraConfig, TrainConfig  # noqa: F401 (re-export)
from .train_config import effective_train_config
from .train_config import lr_lambda as _lr_lambda
from .wrapping import unwrap_model, wrap_model

# Called as hook(trainer, steps_done) after every optimizer step (tests use it to deliver a real SIGTERM).
STEP_HOOKS: list[Callable[["Trainer", int], None]] = []


class DivergenceError(RuntimeError):
    """A loss term or the gradient became NaN/Inf; the message names method, step and term."""

    def __init__(self, method: str, step: int, term: str, value: float):
        self.method, self.step, self.term, self.value = method, step, term, value
        super().__init__(f"{method}: non-finite {term} = {value} at step {step}; lower the learning rate or "
                         "set on_divergence: record to keep the run as 'diverged'")


class Trainer:
    def __init__(self, model, tokenizer, method, tcfg: TrainConfig, forget: Sequence[dict], retain: Sequence[dict],
                 seed: int, device: str | torch.device | None = "auto", checkpoint_dir=None, probe_dir=None,
                 probe=None, log_path=None, fingerprint_extra: dict | None = None):
        tcfg = effective_train_config(tcfg, method.cfg)   # the method's own steps/epochs, grad_clip, adam_eps
        self.method, self.tcfg, self.seed = method, tcfg, int(seed)
        # several processes (docs/methods.md, "Several processes"): None with one, which leaves every path as it was
        self.group = distributed.group_for(tcfg.num_processes)
        self.dist_mode = distributed.resolve_mode(tcfg.distributed) if self.group is not None else None
        self.sharded = self.dist_mode == "fsdp"
        self.is_main = self.group is None or self.group.is_main
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device if device is None else pick_device(str(device))
        self.forget = _truncate(forget, tcfg.max_len)
        self.retain = _truncate(retain, tcfg.max_len)
        if not self.forget:
            raise ValueError(f"{method.name}: the forget set is empty")
        if method.uses_retain and not self.retain:
            raise ValueError(f"{method.name}: the retain set is empty but the method uses a retain loss")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.probe_dir, self.probe = probe_dir, probe
        self.snapshot_fn: Callable[[torch.nn.Module, int], None] | None = None   # set by run_unlearning
        self.log_path = Path(log_path) if log_path is not None else None
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        self.counters = Counters()
        self.ref_model = None
        self._buffer: list[torch.Tensor] | None = None
        self._stop_signal: int | None = None
        self.rows: list[dict] = []
        self.b_eff = tcfg.batch_size * tcfg.grad_accum
        if self.group is not None and tcfg.grad_accum % self.group.world and self.is_main:
            print(f"WARNING: {method.name}: grad_accum {tcfg.grad_accum} is not a multiple of the {self.group.world} "
                  "processes: some run fewer micro-batches per step and wait for the others (the update is the "
                  "same)", file=sys.stderr, flush=True)
        self.steps_per_epoch = max(1, math.ceil(len(self.forget) / self.b_eff))
        self.total_steps = tcfg.steps if tcfg.steps is not None else tcfg.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.fingerprint = {
            "method": method.name, "params": _jsonable(method.cfg.to_dict()),
            # how the run is spread over processes changes no number beyond float rounding: a checkpoint resumes
            # with any number of processes (it holds whole tensors)
            "train": _jsonable({k: v for k, v in tcfg.to_dict().items()
                                if k not in ("progress", "checkpoint_every", "keep_checkpoint", "save_steps",
                                             "num_processes", "distributed")}),
            "seed": self.seed, "forget_sha256": examples_sha256(self.forget),
            "retain_sha256": examples_sha256(self.retain),
            **input_fingerprint(model, probe_dir),  # a rebuilt base model / probe never resumes a stale state
            **(fingerprint_extra or {})}

        seed_everything(derive_seed(self.seed, "train", method.name))
        if tcfg.dtype is not None:
            model = model.to(dtype=resolve_dtype(tcfg.dtype))
        model = model.to(self.device)
        model.eval()
        self.model = model
        self.fingerprint["n_params"] = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        method.prepare(Setup(self))                       # θ₀ caches / frozen copies, before any wrapping
        self.setup_s = time.perf_counter() - t0
        self.setup_counters = dict(self.counters)
        self.counters.clear()
        self.model = wrap_model(self.model, tcfg, method)
        method.select_trainable(self.model)
        self.plain_spec = None
        if self.sharded and (tcfg.lora is not None or not getattr(method, "supports_fsdp", True)):
            # a grid's one distributed setting serves every method: these run replicated (LoRA's and RMU's
            # optimizer state is small; Task Vector needs a whole model per GPU), with the same numbers
            what = "LoRA" if tcfg.lora is not None else f"method {method.name}"
            if self.is_main:
                print(f"WARNING: {method.name}: {what} does not run sharded; distributed: ddp (every process holds "
                      "the whole model)", file=sys.stderr, flush=True)
            self.dist_mode, self.sharded = "ddp", False
        if self.sharded:
            self.plain_spec = distributed.PlainSpec(self.model)   # to rebuild a whole model at the end
            self.group.shard(self.model)
        self.named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError(f"{method.name}: no trainable parameters")
        self.params = [p for _, p in self.named_params]
        self.optimizer = torch.optim.AdamW(self.params, lr=method.lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                           eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay)
        schedule = method.lr_schedule(tcfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(schedule, self.total_steps, tcfg.warmup_steps))
        self.fingerprint["lr_schedule"] = schedule
        self.start_step = 0
        self._maybe_resume()

    def spare_buffer(self) -> list[torch.Tensor]:
        if self._buffer is None:
            self._buffer = [torch.empty_like(p) for p in self.params]
        return self._buffer

    # -------------------------------------------------------------------------------------------- data order
    def forget_indices(self, step: int) -> list[int]:
        return batching.forget_indices(self.seed, step, len(self.forget), self.steps_per_epoch, self.b_eff)

    def retain_indices(self, step: int, forget_idx: Sequence[int]) -> list[int]:
        return batching.retain_indices(self.seed, step, len(self.retain), forget_idx, self.tcfg.retain_sampling)

    def microbatches(self, step: int) -> tuple[list[MicroBatch], list[MicroBatch]]:
        f_idx = self.forget_indices(step)
        r_idx = self.retain_indices(step, f_idx) if (self.method.uses_retain and self.retain) else []
        bs = self.tcfg.batch_size
        return (split_microbatches(self.forget, f_idx, bs, self.pad_id, self.device, "forget"),
                split_microbatches(self.retain, r_idx, bs, self.pad_id, self.device, "retain"))

    # -------------------------------------------------------------------------------------------- one step
    def compute_step(self, step: int) -> dict[str, Any]:
        """Fill ``.grad`` with the clipped final gradient of step ``step`` (no optimizer update)."""
        fm, rm = self.microbatches(step)
        ctx = StepContext(self, step, fm, rm)
        for p in self.params:
            p.grad = None
        try:
            logs = dict(self.method.step(ctx))
        except NonFiniteLoss as exc:
            raise DivergenceError(self.method.name, step + 1, exc.term, exc.value) from exc
        gnorm = clip_grads(self.params, self.tcfg.grad_clip)
        if not math.isfinite(gnorm):
            raise DivergenceError(self.method.name, step + 1, "grad_norm", gnorm)
        logs["grad_norm"] = gnorm
        logs["tokens"] = sum(m.n_positions for m in fm + rm)
        return logs

    # -------------------------------------------------------------------------------------------- training
    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step (gradient, clip, AdamW, schedule); appends and returns the log row."""
        t0, c0 = time.perf_counter(), time.process_time()
        lr = self.scheduler.get_last_lr()[0]
        logs = self.compute_step(step)
        self.optimizer.step()
        self.scheduler.step()
        for p in self.params:
            p.grad = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        row = {"step": step + 1, "epoch": step // self.steps_per_epoch, "lr": lr,
               **{k: _num(v) for k, v in logs.items()}, "step_time_s": dt,
               "step_cpu_s": time.process_time() - c0, "mem_mb": current_memory_mb(self.device)}
        self.rows.append(row)
        return row

    def train(self) -> dict[str, Any]:
        status, divergence = "ok", None
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.start_step, desc=self.method.name,
                   disable=not (self.tcfg.progress and self.is_main), leave=False)
        live = self._open_live_log()
        try:
            with self._signal_guard() as guard:
                for step in range(self.start_step, self.total_steps):
                    try:
                        row = self.train_step(step)
                    except DivergenceError as exc:
                        if self.tcfg.on_divergence == "fail":
                            raise
                        status = "diverged"
                        divergence = {"step": exc.step, "term": exc.term, "value": str(exc.value),
                                      "message": str(exc)}
                        for p in self.params:
                            p.grad = None
                        break
                    if live is not None:
                        live.write(json.dumps(row, sort_keys=True) + "\n")
                        live.flush()
                    bar.update(1)
                    if self.tcfg.progress:
                        bar.set_postfix(loss=f"{row.get('loss', float('nan'))}")
                    if self.snapshot_fn is not None and self.tcfg.save_steps and step + 1 in self.tcfg.save_steps:
                        self._snapshot(step + 1)
                    for hook in list(STEP_HOOKS):
                        hook(self, step + 1)
                    fault_point(f"step={step + 1}")  # RU_FAULT_INJECT (tests only): a crash between checkpoints
                    if self.group is not None:   # all processes stop after the same step
                        self._stop_signal = self.group.agree_stop(self._stop_signal)
                        if self._stop_signal is not None:
                            guard.note_stop()
                    every = self.tcfg.checkpoint_every
                    if self._stop_signal is not None or (every and (step + 1) % every == 0
                                                         and step + 1 < self.total_steps):
                        self.save_checkpoint(step + 1)
                    if self._stop_signal is not None:
                        exc = Preempted(self._stop_signal, step + 1, self.checkpoint_dir)
                        if self.is_main:
                            print(f"{self.method.name}: {exc}", file=sys.stderr, flush=True)
                        raise exc
        finally:
            bar.close()
            if live is not None:
                live.close()
        result = {"status": status, "divergence": divergence, "steps_done": len(self.rows),
                  "total_steps": self.total_steps, "log": self.rows, "cost": self.cost(),
                  "method_info": _jsonable(self.method.info()), "resumed_from": self.start_step or None}
        return result

    def finish(self) -> torch.nn.Module | None:
        """Unwrap (merge LoRA) and drop the frozen copy; returns the model to save (checkpoint kept until
        :meth:`clear_checkpoint`, so a kill while saving the outputs still resumes). With FSDP: a whole copy
        on CPU gathered from the shards, on process 0 (None on the others, which write nothing)."""
        model = unwrap_model(self.model, self.tcfg)
        if self.sharded:
            model = distributed.full_model(model, self.plain_spec, self.is_main)
        self.ref_model = None
        self._buffer = None
        return model

    def _snapshot(self, step: int) -> None:
        model = distributed.full_model(self.model, self.plain_spec, self.is_main) if self.sharded else self.model
        if self.is_main:
            self.snapshot_fn(model, step)

    def clear_checkpoint(self) -> None:
        """Remove the resumable state once the final outputs are safely written (unless keep_checkpoint)."""
        if not self.tcfg.keep_checkpoint and self.checkpoint_dir is not None and self.is_main:
            ckpt.clear_state(self.checkpoint_dir)
            (self.checkpoint_dir / "train_log.live.jsonl").unlink(missing_ok=True)

    def cost(self) -> dict[str, Any]:
        counters, setup = self.counters, self.setup_counters
        if self.group is not None:   # passes of all processes (a collective: every process calls cost())
            counters, setup = self.group.sum_counts(counters), self.group.sum_counts(setup)
        return run_cost(self.rows, counters, setup, self.setup_s, self.device,
                        next(self.model.parameters()).dtype, self.b_eff, self.tcfg.batch_size, self.tcfg.grad_accum,
                        processes=1 if self.group is None else self.group.world, distributed=self.dist_mode)

    # -------------------------------------------------------------------------------------------- checkpointing
    def _state(self, steps_done: int) -> dict[str, Any]:
        return resume.trainer_state(self, steps_done)

    def save_checkpoint(self, steps_done: int) -> None:
        resume.save_trainer(self, steps_done)

    def _maybe_resume(self) -> None:
        resume.resume_trainer(self)

    def _open_live_log(self):
        path = self.log_path or (self.checkpoint_dir / "train_log.live.jsonl" if self.checkpoint_dir else None)
        if path is None or not self.is_main:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w", encoding="utf-8")
        for r in self.rows:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
        fh.flush()
        return fh

    # -------------------------------------------------------------------------------------------- signals
    _SignalGuard = SignalGuard

    def _signal_guard(self):
        return SignalGuard(self, relayed=self.group is not None)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """What the signal handler does: checkpoint after the current step, then raise :class:`Preempted`."""
        self._stop_signal = signum


def _num(v):
    if torch.is_tensor(v):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
