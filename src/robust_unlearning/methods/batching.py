"""Micro-batches and the data order of the training loop.

Data order is a pure function of (seed, step): forget examples are permuted per epoch with a generator seeded by
``derive_seed(seed, "forget", epoch)``; retain examples are drawn per step with ``derive_seed(seed, "retain",
step)`` (``retain_sampling: random``) or paired as ``retain[i mod N_r]`` (``paired_modulo``, as the reference
code does). Resuming therefore needs only the step counter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import torch

from ..data.collate import IGNORE_INDEX, pad_batch
from ..utils.repro import derive_seed


@dataclasses.dataclass
class MicroBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor          # example indices into the forget / retain list (CPU long)
    key: tuple                   # (split, position) – stable within a step
    n_tokens: int                # Σ target positions after the causal shift
    n_positions: int             # Σ attention mask
    owned: torch.Tensor | None = None   # [B,T] bool: positions of the examples themselves, their own padding
    #                                     included (mask_pad_labels: false), the collation's padding excluded
    n_owned: int = 0             # Σ owned

    @property
    def n_examples(self) -> int:
        return int(self.input_ids.shape[0])


def make_microbatch(examples: Sequence[dict], index: Sequence[int], pad_id: int, device, key: tuple) -> MicroBatch:
    b = pad_batch(examples, pad_id)
    labels = b["labels"]
    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    owned = torch.arange(labels.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)   # right padding
    return MicroBatch(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                      labels=labels.to(device), index=torch.as_tensor(list(index), dtype=torch.long), key=key,
                      n_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()), n_positions=int(b["attention_mask"].sum()),
                      owned=owned.to(device), n_owned=int(lengths.sum()))


def split_microbatches(examples: Sequence[dict], index: Sequence[int], batch_size: int, pad_id: int, device,
                       split: str) -> list[MicroBatch]:
    """``examples[i] for i in index`` cut into micro-batches of ``batch_size`` (keys ``(split, offset)``)."""
    return [make_microbatch([examples[i] for i in index[j:j + batch_size]], index[j:j + batch_size], pad_id, device,
                            (split, j)) for j in range(0, len(index), batch_size)]


def examples_sha256(examples: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for e in examples:
        row = [list(e["input_ids"]), list(e.get("labels", e["input_ids"]))]
        if "attention_mask" in e:   # an example's own padding (mask_pad_labels: false) is part of its identity
            row.append(list(e["attention_mask"]))
        h.update(json.dumps(row).encode())
        h.update(b"\n")
    return h.hexdigest()


def truncate_examples(examples: Sequence[dict], max_len: int | None) -> list[dict]:
    if max_len is None:
        return list(examples)
    out = []
    for e in examples:
        cut = {**e, "input_ids": list(e["input_ids"])[:max_len],
               "labels": list(e.get("labels", e["input_ids"]))[:max_len]}
        if "attention_mask" in e:
            cut["attention_mask"] = list(e["attention_mask"])[:max_len]
        out.append(cut)
    return out


def forget_indices(seed: int, step: int, n_forget: int, steps_per_epoch: int, b_eff: int) -> list[int]:
    """The forget examples of optimizer step ``step``: slice ``step mod steps_per_epoch`` of the epoch's permutation."""
    epoch, pos = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(derive_seed(seed, "forget", epoch))
    perm = torch.randperm(n_forget, generator=g).tolist()
    return perm[pos * b_eff:(pos + 1) * b_eff]


def retain_indices(seed: int, step: int, n_retain: int, forget_idx: Sequence[int], sampling: str) -> list[int]:
    """The retain examples paired with ``forget_idx`` (``random``: a fresh draw per step; ``paired_modulo``)."""
    b = len(forget_idx)
    if sampling == "paired_modulo":
        return [i % n_retain for i in forget_idx]
    g = torch.Generator().manual_seed(derive_seed(seed, "retain", step))
    if n_retain >= b:
        return torch.randperm(n_retain, generator=g)[:b].tolist()
    return torch.randint(n_retain, (b,), generator=g).tolist()
