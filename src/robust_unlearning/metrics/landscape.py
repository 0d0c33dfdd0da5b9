"""1-D loss-landscape slice (the paper's parameter-space smoothness picture).

L(α) = loss(θ + α·d) for α ∈ [−1, 1], d a random Gaussian direction, filter-normalised (Li et al. 2018): each
row of every weight matrix (each whole vector for 1-D tensors) is rescaled to the norm of the same row of θ, so
the slice is comparable across models of one architecture. The same seed gives the same direction for every
model, so methods are compared along the same kind of perturbation. Forget and retain losses are token-pooled
CE on fixed documents (one batched forward per α and split): the raw documents, or on a dialogue benchmark the
forget / retain dialogues (loss on the answers).
"""
from __future__ import annotations

import torch

from ..data.collate import encode_text, pad_batch


def filter_normalised_direction(model, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    direction = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.dim() >= 2:
            d *= p.detach().float().norm(dim=-1, keepdim=True) / (d.norm(dim=-1, keepdim=True) + 1e-10)
        else:
            d *= p.detach().float().norm() / (d.norm() + 1e-10)
        direction[name] = d.to(device=p.device, dtype=p.dtype)  # a bf16 7B model: no fp32 copy of its size
    return direction


@torch.inference_mode()
def _loss(model, batch) -> float:
    return float(model(**batch).loss)


def _documents(bench, tokenizer, split: str, raw_name: str, n_docs: int, max_len: int) -> list[dict]:
    """The split's raw documents (MUSE, synthetic world); a dialogue benchmark (WMDP dialogue) has none: its
    forget / retain dialogues then, through the chat template with the loss on the answer, as unlearning sees them."""
    from ..data.formats import BenchmarkError

    try:
        docs = bench.raw(raw_name)
    except BenchmarkError:
        if not bench.has(f"dialogue/{split}.jsonl"):
            raise
        from ..data.unlearning_sets import build_examples

        return build_examples(bench, tokenizer, split, "dialogue", max_len)[:n_docs]
    return [encode_text(tokenizer, t, max_len) for t in docs[:n_docs]]


@torch.inference_mode()
def loss_landscape_1d(model, tokenizer, bench, points: int = 11, seed: int = 0, n_docs: int = 16,
                      max_len: int = 256, radius: float = 1.0) -> dict:
    model.eval()
    device = next(model.parameters()).device
    batches = {}
    for split, name in (("forget", "forget"), ("retain", "retain2")):
        b = pad_batch(_documents(bench, tokenizer, split, name, n_docs, max_len), tokenizer.pad_token_id)
        batches[split] = {k: v.to(device) for k, v in b.items()}
    direction = filter_normalised_direction(model, seed)
    backup = {n: p.detach().clone() for n, p in model.named_parameters()}
    alphas = torch.linspace(-radius, radius, points).tolist()
    losses = {split: [] for split in batches}
    try:
        for a in alphas:
            for n, p in model.named_parameters():
                p.copy_(backup[n] + a * direction[n])
            for split, b in batches.items():
                losses[split].append(_loss(model, b))
    finally:
        for n, p in model.named_parameters():
            p.copy_(backup[n])
    return {"alpha": alphas, "loss": losses, "seed": seed, "n_docs": n_docs}
