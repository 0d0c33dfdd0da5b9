"""The one training loop of every gradient method (architecture.md "The training loop", method.md §2, §13.3).

A method supplies ``prepare(setup)`` (reference caches, frozen copies, parameter selection) and ``step(ctx)``,
which leaves the final combined gradient in ``.grad`` using the helpers of :mod:`.gradients`
(``ctx.accumulate`` for phase-wise accumulation, SAM perturb/restore, GCD). The loop owns everything else:
seeded batching, device/dtype, LoRA and gradient checkpointing, clipping, AdamW and the LR schedule, the NaN
guard, the per-step log, cost metering, and checkpoint/resume on SIGTERM/SIGINT.

Data order is a pure function of (seed, step): forget examples are permuted per epoch with a generator seeded by
``derive_seed(seed, "forget", epoch)``; retain examples are drawn per step with ``derive_seed(seed, "retain",
step)`` (``retain_sampling: random``) or paired as ``retain[i mod N_r]`` (``paired_modulo``, reference). Resuming
therefore needs only the step counter; with model, optimizer, scheduler and RNG states restored, a resumed CPU run
is bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import resource
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.collate import IGNORE_INDEX, pad_batch
from ..models.io import resolve_dtype
from ..utils.repro import derive_seed, pick_device, seed_everything
from . import checkpoint as ckpt
from .gradients import NonFiniteLoss, accumulate_grad, clip_grads, grads_of, zero_grads
from .gradients import combine_gcd, gcd_coefficients, global_norm, grad_stats, project_out  # noqa: F401 (re-export)
from .gradients import sam_perturb, sam_restore  # noqa: F401 (re-export)
from .registry import ConfigBase, ConfigError, choice, num

# Called as hook(trainer, steps_done) after every optimizer step (tests use it to deliver a real SIGTERM).
STEP_HOOKS: list[Callable[["Trainer", int], None]] = []


class DivergenceError(RuntimeError):
    """A loss term or the gradient became NaN/Inf; the message names method, step and term."""

    def __init__(self, method: str, step: int, term: str, value: float):
        self.method, self.step, self.term, self.value = method, step, term, value
        super().__init__(f"{method}: non-finite {term} = {value} at step {step}; lower the learning rate or "
                         "set on_divergence: record to keep the run as 'diverged'")


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; exits with 128 + signal number (143 for SIGTERM)."""

    def __init__(self, signum: int = signal.SIGTERM, step: int | None = None, checkpoint_dir=None):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        super().__init__(128 + int(signum))

    def __str__(self) -> str:
        return f"preempted by signal {self.signum} after step {self.step}; state saved in {self.checkpoint_dir}"


# ----------------------------------------------------------------------------------------------- config

@dataclasses.dataclass
class LoraConfig(ConfigBase):
    r: int = num(8, gt=0)
    alpha: float = num(16.0, gt=0)
    dropout: float = num(0.0, ge=0, lt=1)
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    """Loop settings shared by every method (``train_cfg``). Exactly one of ``steps`` / ``epochs``."""
    steps: int | None = num(None, gt=0)
    epochs: int | None = num(None, gt=0)
    batch_size: int = num(4, gt=0)            # per-device micro-batch
    grad_accum: int = num(1, gt=0)            # micro-batches per optimizer step
    max_len: int | None = num(None, gt=1)     # truncate examples (None: as built)
    dtype: str | None = choice(None, ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"))  # None: keep
    grad_clip: float | None = num(1.0, gt=0)
    retain_sampling: str = choice("random", ("random", "paired_modulo"))
    on_divergence: str = choice("fail", ("fail", "record"))
    checkpoint_every: int | None = num(None, gt=0)
    save_steps: list[int] | None = None       # extra model snapshots after these steps (method.md §3, §14)
    keep_checkpoint: bool = False
    gradient_checkpointing: bool = False
    lora: dict | None = None
    progress: bool = True
    lr_schedule: str = choice("constant", ("constant", "cosine", "linear"))
    warmup_steps: int = num(0, ge=0)
    adam_beta1: float = num(0.9, ge=0, lt=1)
    adam_beta2: float = num(0.999, ge=0, lt=1)
    adam_eps: float = num(1e-8, gt=0)
    weight_decay: float = num(0.0, ge=0)
    log_grad_stats: bool = True               # ‖g_f‖, ‖g_r‖, cos: one extra gradient-sized buffer for 2-phase methods

    def check(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("steps", "set exactly one of steps / epochs")
        if self.save_steps is not None and any(x <= 0 for x in self.save_steps):
            raise ConfigError("save_steps", "steps must be > 0")
        if self.lora is not None:
            try:
                self.lora_cfg = LoraConfig.from_dict(self.lora)
            except ConfigError as exc:
                raise ConfigError(f"lora.{exc.key}", str(exc).split(": ", 1)[-1]) from None

    def resolved(self) -> dict:
        return {k: v for k, v in self.to_dict().items()}


# ----------------------------------------------------------------------------------------------- batches

@dataclasses.dataclass
class MicroBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor          # example indices into the forget / retain list (CPU long)
    key: tuple                   # (split, position) – stable within a step
    n_tokens: int                # Σ target positions after the causal shift
    n_positions: int             # Σ attention mask

    @property
    def n_examples(self) -> int:
        return int(self.input_ids.shape[0])


def make_microbatch(examples: Sequence[dict], index: Sequence[int], pad_id: int, device, key: tuple) -> MicroBatch:
    b = pad_batch(examples, pad_id)
    labels = b["labels"]
    return MicroBatch(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                      labels=labels.to(device), index=torch.as_tensor(list(index), dtype=torch.long), key=key,
                      n_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()), n_positions=int(b["attention_mask"].sum()))


def examples_sha256(examples: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([list(e["input_ids"]), list(e.get("labels", e["input_ids"]))]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _truncate(examples: Sequence[dict], max_len: int | None) -> list[dict]:
    if max_len is None:
        return list(examples)
    return [{**e, "input_ids": list(e["input_ids"])[:max_len],
             "labels": list(e.get("labels", e["input_ids"]))[:max_len]} for e in examples]


# ----------------------------------------------------------------------------------------------- contexts

class Counters(dict):
    def add(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


class Setup:
    """What ``Method.prepare`` sees: the model at θ₀ (before LoRA wrapping), data, device, seed, probe."""

    def __init__(self, trainer: "Trainer"):
        t = trainer
        self.model, self.tokenizer, self.forget, self.retain = t.model, t.tokenizer, t.forget, t.retain
        self.device, self.seed, self.tcfg, self.pad_id = t.device, t.seed, t.tcfg, t.pad_id
        self.probe_dir, self.probe = t.probe_dir, t.probe
        self.counters = t.counters
        self._trainer = t

    def reference_model(self) -> torch.nn.Module:
        """A frozen eval-mode copy of θ₀ (created once, shared by all components of the method)."""
        t = self._trainer
        if t.ref_model is None:
            ref = copy.deepcopy(t.model)
            ref.requires_grad_(False)
            ref.eval()
            t.ref_model = ref
        return t.ref_model

    def microbatches(self, examples: Sequence[dict], split: str = "forget", batch_size: int | None = None):
        """Examples in index order, in micro-batches (for one-off no-grad passes such as the reference cache)."""
        bs = batch_size or self.tcfg.batch_size
        for j in range(0, len(examples), bs):
            idx = list(range(j, min(j + bs, len(examples))))
            yield make_microbatch([examples[i] for i in idx], idx, self.pad_id, self.device, (split, "setup", j))


class StepContext:
    """Everything a method's ``step`` needs for one optimizer step; normalisers are over the logical batch."""

    def __init__(self, trainer: "Trainer", step: int, forget_mbs: list[MicroBatch], retain_mbs: list[MicroBatch]):
        self.trainer = trainer
        self.model = trainer.model
        self.params = trainer.params
        self.step, self.total_steps = step, trainer.total_steps
        self.epoch, self.num_epochs = step // trainer.steps_per_epoch, trainer.num_epochs
        self.forget_mbs, self.retain_mbs = forget_mbs, retain_mbs
        self.forget_tokens = max(sum(m.n_tokens for m in forget_mbs), 1)
        self.forget_examples = max(sum(m.n_examples for m in forget_mbs), 1)
        self.forget_positions = max(sum(m.n_positions for m in forget_mbs), 1)
        self.retain_tokens = max(sum(m.n_tokens for m in retain_mbs), 1)
        self.retain_examples = max(sum(m.n_examples for m in retain_mbs), 1)
        self.retain_positions = max(sum(m.n_positions for m in retain_mbs), 1)
        self.counters = trainer.counters
        self.tcfg = trainer.tcfg

    # progress p ∈ [0, 1] (method.md §10.5)
    def progress(self, kind: str = "step") -> float:
        if kind == "step":
            return self.step / max(1, self.total_steps - 1)
        if kind == "epoch":
            return self.epoch / max(1, self.num_epochs - 1)
        raise ValueError(f"progress kind must be step or epoch, got {kind!r}")

    def forward(self, mb: MicroBatch, hidden_states: bool = False):
        self.counters.add("policy_forward")
        return self.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False,
                          output_hidden_states=hidden_states)

    def accumulate(self, loss_fn: Callable, mbs: Sequence[MicroBatch], phase: str) -> dict[str, float]:
        return accumulate_grad(loss_fn, mbs, phase, on_backward=lambda: self.counters.add("policy_backward"))

    def grads(self) -> list[torch.Tensor]:
        return grads_of(self.params)

    def zero_grad(self) -> None:
        zero_grads(self.params)

    def buffer(self) -> list[torch.Tensor]:
        """The single spare gradient-sized buffer (allocated once per run, reused every step)."""
        return self.trainer.spare_buffer()


# ----------------------------------------------------------------------------------------------- trainer

def _lr_lambda(schedule: str, total: int, warmup: int) -> Callable[[int], float]:
    def f(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        prog = (i - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(prog, 1.0)))
        return max(0.0, 1.0 - prog)  # linear
    return f


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return peak_memory_mb(device)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder block list (``model.model.layers`` for Llama/Mistral; found by name through wrappers)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.split(".")[-1] == "layers":
            if best is None or len(name) < len(best[0]):
                best = (name, mod)
    if best is None:
        raise ValueError("model has no decoder ModuleList named 'layers'")
    return best[1]


class Trainer:
    def __init__(self, model, tokenizer, method, tcfg: TrainConfig, forget: Sequence[dict], retain: Sequence[dict],
                 seed: int, device: str | torch.device | None = "auto", checkpoint_dir=None, probe_dir=None,
                 probe=None, log_path=None, fingerprint_extra: dict | None = None):
        self.method, self.tcfg, self.seed = method, tcfg, int(seed)
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
        self.steps_per_epoch = max(1, math.ceil(len(self.forget) / self.b_eff))
        self.total_steps = tcfg.steps if tcfg.steps is not None else tcfg.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.fingerprint = {
            "method": method.name, "params": _jsonable(method.cfg.to_dict()),
            "train": _jsonable({k: v for k, v in tcfg.to_dict().items()
                                if k not in ("progress", "checkpoint_every", "keep_checkpoint", "save_steps")}),
            "seed": self.seed, "forget_sha256": examples_sha256(self.forget),
            "retain_sha256": examples_sha256(self.retain), **(fingerprint_extra or {})}

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
        self._wrap_model()
        method.select_trainable(self.model)
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

    # -------------------------------------------------------------------------------------------- setup
    def _wrap_model(self) -> None:
        tc = self.tcfg
        if tc.lora is not None:
            if not self.method.supports_lora:
                raise ConfigError("lora", f"method {self.method.name} selects its own parameters; LoRA unsupported")
            from peft import LoraConfig as PeftLora, get_peft_model
            lc = tc.lora_cfg
            self.model = get_peft_model(self.model, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                             target_modules=list(lc.target_modules),
                                                             task_type="CAUSAL_LM"))
            self.model.enable_input_require_grads()
        if tc.gradient_checkpointing:
            if hasattr(self.model, "config"):
                self.model.config.use_cache = False
            if hasattr(self.model, "activation_checkpointing_enable"):   # transformers ≥ 5 name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()

    def spare_buffer(self) -> list[torch.Tensor]:
        if self._buffer is None:
            self._buffer = [torch.empty_like(p) for p in self.params]
        return self._buffer

    # -------------------------------------------------------------------------------------------- data order
    def forget_indices(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(derive_seed(self.seed, "forget", epoch))
        perm = torch.randperm(len(self.forget), generator=g).tolist()
        return perm[pos * self.b_eff:(pos + 1) * self.b_eff]

    def retain_indices(self, step: int, forget_idx: Sequence[int]) -> list[int]:
        n_r, b = len(self.retain), len(forget_idx)
        if self.tcfg.retain_sampling == "paired_modulo":
            return [i % n_r for i in forget_idx]
        g = torch.Generator().manual_seed(derive_seed(self.seed, "retain", step))
        if n_r >= b:
            return torch.randperm(n_r, generator=g)[:b].tolist()
        return torch.randint(n_r, (b,), generator=g).tolist()

    def microbatches(self, step: int) -> tuple[list[MicroBatch], list[MicroBatch]]:
        f_idx = self.forget_indices(step)
        r_idx = self.retain_indices(step, f_idx) if (self.method.uses_retain and self.retain) else []
        bs = self.tcfg.batch_size
        fm = [make_microbatch([self.forget[i] for i in f_idx[j:j + bs]], f_idx[j:j + bs], self.pad_id, self.device,
                              ("forget", j)) for j in range(0, len(f_idx), bs)]
        rm = [make_microbatch([self.retain[i] for i in r_idx[j:j + bs]], r_idx[j:j + bs], self.pad_id, self.device,
                              ("retain", j)) for j in range(0, len(r_idx), bs)]
        return fm, rm

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
                   disable=not self.tcfg.progress, leave=False)
        live = self._open_live_log()
        try:
            with self._signal_guard():
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
                        self.snapshot_fn(self.model, step + 1)
                    for hook in list(STEP_HOOKS):
                        hook(self, step + 1)
                    every = self.tcfg.checkpoint_every
                    if self._stop_signal is not None or (every and (step + 1) % every == 0
                                                         and step + 1 < self.total_steps):
                        self.save_checkpoint(step + 1)
                    if self._stop_signal is not None:
                        exc = Preempted(self._stop_signal, step + 1, self.checkpoint_dir)
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

    def finish(self) -> torch.nn.Module:
        """Unwrap (merge LoRA) and drop the frozen copy; returns the model to save (checkpoint kept until
        :meth:`clear_checkpoint`, so a kill while saving the outputs still resumes)."""
        model = self.model
        if self.tcfg.lora is not None:
            model = model.merge_and_unload()
        if self.tcfg.gradient_checkpointing:
            disable = getattr(model, "activation_checkpointing_disable", None) or \
                getattr(model, "gradient_checkpointing_disable", None)
            if disable is not None:
                disable()
            if hasattr(model, "config"):
                model.config.use_cache = True
        model.eval()
        self.ref_model = None
        self._buffer = None
        return model

    def clear_checkpoint(self) -> None:
        """Remove the resumable state once the final outputs are safely written (unless keep_checkpoint)."""
        if not self.tcfg.keep_checkpoint and self.checkpoint_dir is not None:
            ckpt.clear_state(self.checkpoint_dir)
            (self.checkpoint_dir / "train_log.live.jsonl").unlink(missing_ok=True)

    def cost(self) -> dict[str, Any]:
        times = [r["step_time_s"] for r in self.rows if "step_time_s" in r]
        tail = times[5:] if len(times) > 5 else times
        tokens = sum(r.get("tokens", 0) for r in self.rows)
        n = max(len(self.rows), 1)
        return {"s_per_step": statistics.median(tail) if tail else None,
                "tokens_per_s": tokens / sum(times) if times and sum(times) > 0 else None,
                "peak_mem_mb": peak_memory_mb(self.device), "steps": len(self.rows),
                "effective_batch": self.b_eff * 1, "per_device_batch": self.tcfg.batch_size,
                "grad_accum": self.tcfg.grad_accum, "processes": 1,
                "passes": dict(self.counters), "passes_per_step": {k: v / n for k, v in self.counters.items()},
                "setup_passes": self.setup_counters, "setup_s": self.setup_s,
                "device": str(self.device), "dtype": str(next(self.model.parameters()).dtype)}

    # -------------------------------------------------------------------------------------------- checkpointing
    def _state(self, steps_done: int) -> dict[str, Any]:
        return {"trainable": {n: p.detach().to("cpu", copy=True) for n, p in self.named_params},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.rng_state(), "step": steps_done, "rows": json.dumps(self.rows),
                "counters": json.dumps(self.counters)}

    def save_checkpoint(self, steps_done: int) -> None:
        if self.checkpoint_dir is None:
            return
        ckpt.save_state(self.checkpoint_dir, self._state(steps_done),
                        {"fingerprint": self.fingerprint, "step": steps_done, "total_steps": self.total_steps,
                         "saved_at": time.time()})

    def _maybe_resume(self) -> None:
        loaded = ckpt.load_state(self.checkpoint_dir, _jsonable(self.fingerprint))
        if loaded is None:
            return
        state, _meta = loaded
        names = {n for n, _ in self.named_params}
        if set(state["trainable"]) != names:
            raise ckpt.CheckpointMismatchError(f"{self.checkpoint_dir}: trainable parameter names differ")
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(state["trainable"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.start_step = int(state["step"])
        self.rows = json.loads(state["rows"])
        self.counters.update(json.loads(state["counters"]))
        print(f"{self.method.name}: resumed from step {self.start_step} of {self.total_steps} "
              f"(checkpoint {self.checkpoint_dir})", file=sys.stderr, flush=True)

    def _open_live_log(self):
        path = self.log_path or (self.checkpoint_dir / "train_log.live.jsonl" if self.checkpoint_dir else None)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w", encoding="utf-8")
        for r in self.rows:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
        fh.flush()
        return fh

    class _SignalGuard:
        def __init__(self, trainer: "Trainer"):
            self.t, self.old = trainer, {}

        def _handler(self, signum, frame):
            if self.t._stop_signal is not None:  # second signal: stop now, no checkpoint
                raise Preempted(signum, None, None)
            self.t._stop_signal = signum

        def __enter__(self):
            if threading.current_thread() is threading.main_thread():
                for s in (signal.SIGTERM, signal.SIGINT):
                    self.old[s] = signal.signal(s, self._handler)
            return self

        def __exit__(self, *exc):
            for s, h in self.old.items():
                signal.signal(s, h)
            return False

    def _signal_guard(self):
        return Trainer._SignalGuard(self)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """What the signal handler does: checkpoint after the current step, then raise :class:`Preempted`."""
        self._stop_signal = signum


def _num(v):
    if torch.is_tensor(v):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))
