"""Several processes for one model (docs/methods.md, "Several processes"): data parallel or sharded (FSDP).

A run with ``unlearning.train.num_processes: N > 1`` is started by ``accelerate launch`` (``ru unlearn`` and the
relearning attack relaunch themselves: :mod:`robust_unlearning.cli.launch`); each process joins the group through
accelerate's ``PartialState`` (gloo on CPU, nccl on CUDA, one device per process). With one process nothing here
runs and nothing is imported beyond this module: the default path is untouched.

What stays the same as one process: the global batch and its order. Every process builds the SAME logical batch
(the seeded order of :mod:`.batching`) and the same normalisers of :class:`~.contexts.StepContext` (forget tokens,
examples, owned positions: counts of the whole logical batch, so every loss is already divided by the global
count). Only the micro-batches a phase runs are split: process r takes micro-batches r, r+W, r+2W, … After the
phase the gradients are SUMMED over processes — each process's sum is a part of the one full-batch gradient —
and so are the logged terms. Then:

- ``ddp`` (replicated parameters): an all-reduce of every ``.grad`` leaves the full-batch gradient on every
  process, so SAM's ‖g‖, GCD's ⟨g_f, g_r⟩, clipping and AdamW compute the same numbers everywhere (global by
  construction);
- ``fsdp`` (parameters, gradients and AdamW state sharded with torch's FSDP2 ``fully_shard``, one unit per decoder
  block plus the root): FSDP's reduce-scatter sums the gradient into each process's shard (divide factor 1, not
  the default mean), and norms and inner products of sharded tensors are sums of per-shard partial sums
  all-reduced over processes (:func:`reduce_sharded`, used by :mod:`.gradients`), so the same quantities are global
  there too. FSDP's collectives need every process to make the same passes: a process with fewer micro-batches in
  a phase than the others runs one more with weight 0.

A non-finite term on any process becomes non-finite in the summed terms on every process, so every process raises
the same :class:`~.gradients.NonFiniteLoss` (a process that raised alone would leave the others waiting). Only
process 0 writes (model, logs, checkpoints); checkpoints hold full (unsharded) tensors, so a run resumes with any
number of processes, and every process reads the same checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import signal
from datetime import timedelta
from typing import Callable, Sequence

import torch

MODES = ("ddp", "fsdp")
#: the mode when a train config does not name one (relearning: set by the launcher from unlearning.train)
MODE_ENV = "RU_DISTRIBUTED"
#: the first process-group operation may wait this long for the others (loading a 7-8B model, writing its checkpoint)
TIMEOUT_S = 3600
PRIVATE = "\0"   # prefix of the phase's own loss values among the summed terms (never logged)

_GROUP: "Group | None" = None


def env_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolve_mode(mode: str | None) -> str:
    """``mode`` (the train config's ``distributed``), else $RU_DISTRIBUTED, else ``ddp``."""
    value = mode or os.environ.get(MODE_ENV) or "ddp"
    if value not in MODES:
        raise ValueError(f"distributed must be one of {list(MODES)}, got {value!r} (from "
                         f"{'unlearning.train.distributed' if mode else '$' + MODE_ENV})")
    return value


def current() -> "Group | None":
    """The process group of this run, joined on first use; None with one process."""
    return init()


def group_for(num_processes: int | None) -> "Group | None":
    """The group a training loop runs in: None with one process. ``num_processes`` (the train config's), when
    given, must be the number of processes the launcher started."""
    world = env_world_size()
    if world <= 1:
        if num_processes is not None and num_processes > 1:
            from .registry import ConfigError

            raise ConfigError("num_processes", f"{num_processes} processes requested, but this process runs alone: "
                                               f"start it with `accelerate launch --num_processes {num_processes}` "
                                               "(`ru unlearn` and the relearning attack do that themselves)")
        return None
    if num_processes is not None and num_processes != world:
        from .registry import ConfigError

        raise ConfigError("num_processes", f"{num_processes}, but the launcher started {world} processes")
    return init()


def init() -> "Group | None":
    """Join the group the launcher set up (``WORLD_SIZE`` > 1); None with one process. Idempotent.

    Sets this process's CUDA device (``LOCAL_RANK``) before any model is loaded, leaves info logging to process 0,
    and restores the default SIGTERM action (the training loop installs its own handler, see
    :class:`~.preemption.SignalGuard`)."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    if env_world_size() <= 1:
        return None
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        local_rank, n_dev = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= n_dev:   # e.g. a local run's GPU lease gave the job one device
            raise RuntimeError(f"{env_world_size()} processes on this machine but {n_dev} GPU(s) visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): one GPU per "
                               "process is needed (docs/cluster.md, \"GPUs\")")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        from accelerate import PartialState

        # accelerate picks nccl on CUDA; on CPU (cpu=True) gloo, which its default would not pick without MPI
        PartialState(cpu=not cuda, timeout=timedelta(seconds=TIMEOUT_S))
    _GROUP = Group(torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"))
    if not _GROUP.is_main:
        logging.getLogger("robust_unlearning").setLevel(logging.WARNING)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return _GROUP


def shutdown() -> None:
    """Leave the process group (end of a job)."""
    global _GROUP
    import torch.distributed as dist

    if _GROUP is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _GROUP = None


# ---------------------------------------------------------------------------------------------- sharded tensors

def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def sharded_mask(tensors: Sequence[torch.Tensor]) -> list[bool] | None:
    """Per tensor: is it a shard of a larger tensor (an FSDP DTensor with a Shard placement)? None when none is,
    which is always the case with one process (checked without importing anything)."""
    if not tensors or not _initialized():
        return None
    from torch.distributed.tensor import DTensor

    mask = [isinstance(t, DTensor) and any(p.is_shard() for p in t.placements) for t in tensors]
    return mask if any(mask) else None


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this process holds (a DTensor's local shard; ``t`` itself otherwise)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def local_parts(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local_part` of each tensor. Element-wise in-place ops (the foreach copies, adds and scalings of
    SAM, GCD, clipping) on FSDP tensors run on the local shards, which are aligned between a parameter, its
    gradient and the spare buffer: the op on the whole tensors, without DTensor dispatch (which has no rule for
    some of them, e.g. ``_foreach_copy_``). With one process: the tensors themselves, nothing inspected."""
    if not _initialized():
        return list(tensors)
    return [local_part(t) for t in tensors]


def reduce_sharded(values: Sequence[float], mask: Sequence[bool]) -> list[float]:
    """``values[i]`` summed over processes where ``mask[i]`` (partial sums over shards), unchanged elsewhere.
    One all-reduce in float64."""
    import torch.distributed as dist

    idx = [i for i, m in enumerate(mask) if m]
    out = list(values)
    if idx:
        dev = _comm_device()
        t = torch.tensor([float(values[i]) for i in idx], dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        for i, v in zip(idx, t.tolist()):
            out[i] = v
    return out


def _comm_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (a collective for a DTensor: every process must call it)."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` (the whole tensor, on every process) laid out as ``ref``: its shard when ``ref`` is a DTensor
    (cut locally, no communication), moved to ``ref``'s device and dtype."""
    mesh = getattr(ref, "device_mesh", None)
    if mesh is None:
        return full.to(device=ref.device, dtype=ref.dtype)
    from torch.distributed.tensor import distribute_tensor

    local = local_part(ref)
    return distribute_tensor(full.to(device=local.device, dtype=ref.dtype), mesh, ref.placements,
                             src_data_rank=None)


# ---------------------------------------------------------------------------------------------- the group

class Group:
    """The processes of one run as the training loop uses them (rank, size, the collectives it needs)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.comm_device = _comm_device()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self, items: Sequence) -> list:
        """This process's share of a phase's micro-batches: r, r+W, r+2W, …"""
        return list(items)[self.rank::self.world]

    def barrier(self) -> None:
        self.dist.barrier()

    # ------------------------------------------------------------------------------------- phases
    def accumulate(self, loss_fn: Callable, mbs: Sequence, phase: str, params: Sequence[torch.Tensor], sharded: bool,
                   on_backward: Callable[[], None] | None = None) -> dict[str, float]:
        """:func:`~.gradients.accumulate_grad` over this process's micro-batches, then the gradient and the terms
        summed over processes (see the module docstring)."""
        from .gradients import accumulate_grad

        mbs = list(mbs)
        mine = self.local(mbs)
        if not sharded:
            self._keep_once(params)
        totals = accumulate_grad(loss_fn, mine, phase, on_backward, strict=False)
        if sharded:
            for _ in range(self._missing(len(mbs), len(mine))):   # FSDP: the same number of passes everywhere
                loss, _terms = loss_fn(mbs[0])
                if loss.requires_grad:
                    (loss * 0.0).backward()
        else:
            self.sum_tensors_([g for g in _grads(params)])
        return self._summed_terms(totals, mbs, mine, phase)

    def accumulate_split(self, loss_fn: Callable, mbs: Sequence, params: Sequence[torch.Tensor],
                         aux_buffer: Sequence[torch.Tensor], phase: str, sharded: bool,
                         on_backward: Callable[[], None] | None = None,
                         on_aux_backward: Callable[[], None] | None = None) -> dict[str, float]:
        """:func:`~.gradients.accumulate_split` over this process's micro-batches, both gradients summed.

        With FSDP the parameters in the graph are the unsharded copies FSDP gathers, not the sharded ones, so
        ``torch.autograd.grad`` w.r.t. the parameters cannot see them: the aux gradient is taken with a
        ``backward`` instead, into ``aux_buffer`` put in place of ``.grad`` for that call (FSDP's reduce-scatter
        adds into whatever ``.grad`` is), then the main one into ``.grad``."""
        from .gradients import _term_values, accumulate_split

        mbs = list(mbs)
        mine = self.local(mbs)
        params = list(params)
        if not sharded:
            self._keep_once(params, aux_buffer)
            totals = accumulate_split(loss_fn, mine, params, aux_buffer, phase, on_backward, on_aux_backward,
                                      strict=False)
            self.sum_tensors_(_grads(params) + list(aux_buffer))
            return self._summed_terms(totals, mbs, mine, phase)
        totals: dict[str, float] = {}
        n_pad = self._missing(len(mbs), len(mine))
        for mb, weight in [(mb, 1.0) for mb in mine] + [(mbs[0], 0.0)] * n_pad:
            main, aux, terms = loss_fn(mb)
            if weight:
                values = _term_values(terms, phase, [(f"loss_{phase}_main", main), (f"loss_{phase}_aux", aux)],
                                      strict=False)
                for k, v in values.items():
                    totals[k] = totals.get(k, 0.0) + v
            if aux.requires_grad:
                kept = [p.grad for p in params]
                for p, b in zip(params, aux_buffer):
                    p.grad = b
                try:
                    (aux * weight).backward(retain_graph=main.requires_grad)
                finally:
                    for p, g in zip(params, kept):
                        p.grad = g
                if on_aux_backward is not None and weight:
                    on_aux_backward()
            if main.requires_grad:
                (main * weight).backward()
                if on_backward is not None and weight:
                    on_backward()
        return self._summed_terms(totals, mbs, mine, phase)

    def _keep_once(self, params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor] = ()) -> None:
        """ddp, before a phase adds to ``.grad``: what ``.grad`` (and the aux buffer) already hold is the same
        summed gradient on every process (an earlier phase that the method did not zero, e.g. the forget
        gradient under the retain one); only process 0 keeps it, so the sum after the phase counts it once."""
        if not self.is_main:
            from .gradients import zero_grads

            zero_grads(params)
            if buffers:
                torch._foreach_zero_(list(buffers))

    def _missing(self, n_total: int, n_mine: int) -> int:
        return (-(-n_total // self.world) - n_mine) if n_total else 0

    def _summed_terms(self, totals: dict[str, float], mbs: list, mine: list, phase: str) -> dict[str, float]:
        """The phase's terms summed over processes; raises NonFiniteLoss on every process alike."""
        from .gradients import NonFiniteLoss

        if not mbs:
            return totals
        if len(mbs) < self.world:   # some processes ran no micro-batch: take the names from process 0
            box = [sorted(totals)]
            self.dist.broadcast_object_list(box, src=0)
            keys = box[0]
        else:
            keys = sorted(totals)
        summed = dict(zip(keys, self.sum_floats([totals.get(k, 0.0) for k in keys])))
        for k, v in sorted(summed.items(), key=lambda kv: kv[0].startswith(PRIVATE)):   # a term before a loss
            if not math.isfinite(v):
                raise NonFiniteLoss(k.lstrip(PRIVATE), v, phase)
        return {k: v for k, v in summed.items() if not k.startswith(PRIVATE)}

    # ------------------------------------------------------------------------------------- collectives
    def sum_floats(self, values: Sequence[float]) -> list[float]:
        if not values:
            return []
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        self.dist.all_reduce(t)
        return t.tolist()

    def sum_tensors_(self, tensors: Sequence[torch.Tensor]) -> None:
        """In place: each tensor summed over processes (asynchronous all-reduces, then one wait)."""
        works = [self.dist.all_reduce(t, async_op=True) for t in tensors]
        for w in works:
            w.wait()

    def sum_counts(self, counts: dict) -> dict:
        """Pass counters summed over processes (a process may lack a key: the union of the names)."""
        names: list = [None] * self.world
        self.dist.all_gather_object(names, sorted(counts))
        keys = sorted(set().union(*names))
        return {k: int(v) for k, v in zip(keys, self.sum_floats([counts.get(k, 0) for k in keys]))}

    def agree_stop(self, signum: int | None) -> int | None:
        """The stop signal any process has received (SIGTERM reaches the processes at slightly different
        times): all stop after the same step, or none does."""
        t = torch.tensor([int(signum or 0)], dtype=torch.int64, device=self.comm_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item()) or None

    # ------------------------------------------------------------------------------------- FSDP
    def shard(self, model: torch.nn.Module) -> None:
        """FSDP2 in place: one unit per decoder block and the root (embeddings, final norm, head); gradients are
        reduced as a SUM (the losses are already divided by the global counts)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from .contexts import decoder_layers

        mesh = init_device_mesh(self.device.type, (self.world,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        for mod in model.modules():
            if isinstance(mod, FSDPModule):
                mod.set_gradient_divide_factor(1.0)
                mod.set_force_sum_reduction_for_comms(True)   # a plain SUM (gloo has no pre-multiplied sum)


def _grads(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    from .gradients import grads_of

    return grads_of(params)


# ---------------------------------------------------------------------------------------------- whole models

class PlainSpec:
    """What it takes to rebuild an unsharded copy of a model after FSDP: its class and config, taken before
    ``fully_shard`` (which changes the class)."""

    def __init__(self, model: torch.nn.Module):
        import copy

        self.cls = type(model)
        self.config = copy.deepcopy(getattr(model, "config", None))
        self.generation_config = copy.deepcopy(getattr(model, "generation_config", None))


def full_model(model: torch.nn.Module, spec: PlainSpec, is_main: bool) -> torch.nn.Module | None:
    """An unsharded CPU copy of a sharded model on process 0 (None elsewhere); a collective.

    Weights and persistent buffers from the gathered state dict, the others (rotary frequencies) copied, ties
    restored; the live sharded model is not changed."""
    state = {}
    for name, value in model.state_dict().items():
        full = full_tensor(value)
        if is_main:
            state[name] = full.detach().to("cpu", copy=True)
        del full
    if not is_main:
        return None
    with torch.device("meta"):
        plain = spec.cls(spec.config)
    plain.load_state_dict(state, strict=True, assign=True)
    for name, buf in model.named_buffers():
        mod, _, leaf = name.rpartition(".")
        owner = plain.get_submodule(mod) if mod else plain
        if owner._buffers.get(leaf) is not None and owner._buffers[leaf].is_meta:
            owner._buffers[leaf] = full_tensor(buf).detach().to("cpu", copy=True)
    if getattr(spec.config, "tie_word_embeddings", False) and hasattr(plain, "tie_weights"):
        plain.tie_weights()
    if spec.generation_config is not None:
        plain.generation_config = spec.generation_config
    plain.eval()
    return plain
