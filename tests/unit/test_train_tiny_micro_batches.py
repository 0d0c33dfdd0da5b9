"""The from-scratch training step (models/train_tiny.py): a batch padded as length-sorted micro-batches, with the
loss normalised by the whole batch's token count, is the same optimizer step as the one padded batch."""
from __future__ import annotations

import torch

from robust_unlearning.data.collate import pad_batch
from robust_unlearning.models.train_tiny import length_sorted_micro_batches


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def test_micro_batches_give_the_gradient_and_loss_of_the_whole_padded_batch(micro_model, tiny_tokenizer):
    texts = ["The town of Orlinde lies on the river.", "Q: host?", "A much longer document about the glass heron "
             "and the mayor of the town, who was born in a year no one remembers.", "Answer: heron", "Orlinde",
             "The mentor of the mayor was a lab worker.", "Q: river? A: the Vell", "x"] * 2
    chunk = [{"input_ids": tiny_tokenizer(t)["input_ids"]} for t in texts]
    model = micro_model.train()

    whole = pad_batch(chunk, tiny_tokenizer.pad_token_id)
    want_loss = model(**whole).loss
    want_loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    micro = length_sorted_micro_batches(chunk, tiny_tokenizer.pad_token_id, size=4)
    assert len(micro) == 4
    widths = [b["input_ids"].shape[1] for b in micro]
    assert widths == sorted(widths) and sum(b["input_ids"].numel() for b in micro) < whole["input_ids"].numel()
    n_targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    loss = 0.0
    for b in micro:
        part = model(**b, num_items_in_batch=n_targets).loss
        part.backward()
        loss += part.detach()
    assert torch.allclose(loss, want_loss.detach(), atol=1e-5)
    for g, w in zip(_grads(model), want):
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-4)
