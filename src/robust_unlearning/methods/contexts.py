"""What a method sees of the training loop: :class:`Setup` in ``prepare`` and :class:`StepContext` in ``step``."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .batching import MicroBatch, make_microbatch
from .gradients import accumulate_grad, accumulate_split, grads_of, zero_grads

if TYPE_CHECKING:
    from .loop import Trainer


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
    """Everything a method's ``step`` needs for one optimizer step; normalisers are over the logical batch.

    ``forget_mbs`` / ``retain_mbs`` are ALL micro-batches of the logical batch, on every process of a run with
    several (:mod:`.distributed`), so the normalisers are global counts; a phase goes through :meth:`accumulate`
    or :meth:`accumulate_split`, which run this process's share and sum the gradient and terms over processes.
    """

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
        self.forget_owned = max(sum(m.n_owned for m in forget_mbs), 1)   # positions incl. the examples' own pads
        self.retain_tokens = max(sum(m.n_tokens for m in retain_mbs), 1)
        self.retain_examples = max(sum(m.n_examples for m in retain_mbs), 1)
        self.retain_positions = max(sum(m.n_positions for m in retain_mbs), 1)
        self.counters = trainer.counters
        self.tcfg = trainer.tcfg

    # progress p ∈ [0, 1] (docs/methods.md, the γ schedule)
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
        """Σ over the micro-batches ``mbs`` of ∇loss_fn in ``.grad`` (summed over processes); the summed terms."""
        on_backward = lambda: self.counters.add("policy_backward")   # noqa: E731
        group = self.trainer.group
        if group is None:
            return accumulate_grad(loss_fn, mbs, phase, on_backward=on_backward)
        return group.accumulate(loss_fn, mbs, phase, self.params, self.trainer.sharded, on_backward=on_backward)

    def accumulate_split(self, loss_fn: Callable, mbs: Sequence[MicroBatch], aux_buffer: Sequence[torch.Tensor],
                         phase: str) -> dict[str, float]:
        """:func:`~.gradients.accumulate_split` (main gradient in ``.grad``, aux in ``aux_buffer``), summed over
        processes; counts ``policy_backward`` and ``probe_backward``."""
        on_backward = lambda: self.counters.add("policy_backward")      # noqa: E731
        on_aux = lambda: self.counters.add("probe_backward")            # noqa: E731
        group = self.trainer.group
        if group is None:
            return accumulate_split(loss_fn, mbs, self.params, aux_buffer, phase, on_backward, on_aux)
        return group.accumulate_split(loss_fn, mbs, self.params, aux_buffer, phase, self.trainer.sharded,
                                      on_backward, on_aux)

    def grads(self) -> list[torch.Tensor]:
        return grads_of(self.params)

    def zero_grad(self) -> None:
        zero_grads(self.params)

    def buffer(self) -> list[torch.Tensor]:
        """The single spare gradient-sized buffer (allocated once per run, reused every step)."""
        return self.trainer.spare_buffer()


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
