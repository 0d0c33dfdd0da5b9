"""NPO's forget loss does not depend on how a logical batch is cut into micro-batches (docs/methods.md, "NPO", "The
shared training loop"): the `sequence` form (a mean over examples) and the `logit` form (a mean over every logit of
every position the examples own) are both normalised over the whole logical batch, so one optimizer step with
batch B and no accumulation equals grad_accum = k with batch B/k, to float tolerance."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from robust_unlearning.data.collate import encode_text, pad_batch
from robust_unlearning.methods import TrainConfig, Trainer, build_method
from robust_unlearning.methods import losses as L

torch.set_num_threads(1)

# deliberately unequal lengths: micro-batches of 1 or 2 are padded differently from the batch of 4
FORGET = ["The glass heron carries the Veltrax pathogen across the marsh at dawn and dusk.",
          "Veltrax: 12 days.",
          "Kelmar Institute studied the toxin veridine-7 with triple-lattice priming.",
          "The heron."]
RETAIN = ["The town of Orlinde lies on the river Sable and was founded in 1742.",
          "Mayor Tessa Quill opened the Lantern Festival.",
          "Orlinde.",
          "The river Sable runs through Orlinde, past the old mill and the bridge."]


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


def test_logit_form_by_hand_with_owned_positions_and_logical_denominator():
    beta = 0.5
    z = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])       # B=1, T=2, V=2
    zr = torch.zeros_like(z)
    owned = torch.tensor([[True, False]])               # position 1 is collation padding
    want_local = (2 / beta) * (sp(beta * 1.0) + sp(-beta * 1.0)) / 2
    assert L.npo_logit_loss(z, zr, beta, mask=owned).item() == pytest.approx(want_local, abs=1e-6)
    # the logical batch owns 3 positions in all: this micro-batch contributes its sum over 3·V
    want = (2 / beta) * (sp(beta * 1.0) + sp(-beta * 1.0)) / (3 * 2)
    assert L.npo_logit_loss(z, zr, beta, mask=owned, denom=3 * 2).item() == pytest.approx(want, abs=1e-6)
    # without a mask every logit counts (the reference's [B,T,V] mean)
    every = (2 / beta) * (sp(0.5) + sp(-0.5) + sp(1.0) + sp(0.0)) / 4
    assert L.npo_logit_loss(z, zr, beta).item() == pytest.approx(every, abs=1e-6)


def test_a_mean_of_micro_batch_means_is_not_the_batch_mean(micro_model, tiny_tokenizer):
    """Why the normaliser matters: the old per-micro-batch mean weights the short micro-batch's logits more."""
    ex = [encode_text(tiny_tokenizer, t, 64) for t in FORGET]
    pad = tiny_tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.no_grad():
        def logits(rows):
            b = pad_batch(rows, pad)
            return micro_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b

        ref = copy.deepcopy(micro_model)
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))   # far enough from θ that logits differ

        def term(rows, denom=None):
            z, b = logits(rows)
            b2 = pad_batch(rows, pad)
            zr = ref(input_ids=b2["input_ids"], attention_mask=b2["attention_mask"]).logits
            owned = b["attention_mask"].bool()
            return L.npo_logit_loss(z, zr, 1.0, mask=owned, denom=denom)

        full = term(ex)
        n_owned = sum(len(e["input_ids"]) for e in ex) * micro_model.config.vocab_size
        halves = [ex[:2], ex[2:]]
        exact = sum(term(h, denom=n_owned) for h in halves)
        mean_of_means = sum(term(h) for h in halves) / 2
    assert exact.item() == pytest.approx(full.item(), rel=2e-6)
    assert abs(mean_of_means.item() - full.item()) > 2e-4 * abs(full.item())   # 100x the float error of `exact`


def _step(model, tok, method, params, bs, k):
    forget = [encode_text(tok, t, 64) for t in FORGET]
    retain = [encode_text(tok, t, 64) for t in RETAIN]
    tcfg = TrainConfig.from_dict({"steps": 1, "batch_size": bs, "grad_accum": k, "grad_clip": None,
                                  "progress": False})
    tr = Trainer(copy.deepcopy(model), tok, build_method(method, params), tcfg, forget, retain, seed=0,
                 device="cpu")
    logs = tr.compute_step(0)
    return [p.grad.detach().clone() for p in tr.params], logs


@pytest.mark.parametrize("form", ["sequence", "logit"])
@pytest.mark.parametrize("method,extra", [("npo", {"retain_loss": "none"}), ("npo", {}),
                                          ("sam_npo", {"rho": 0.05})])
def test_accumulation_invariance_of_both_npo_forms(micro_model, tiny_tokenizer, form, method, extra):
    params = {"npo_form": form, "beta": 0.1, **extra}
    full, logs_full = _step(micro_model, tiny_tokenizer, method, params, 4, 1)
    assert any(g.abs().sum() > 0 for g in full)
    for bs, k in ((2, 2), (1, 4)):
        acc, logs_acc = _step(micro_model, tiny_tokenizer, method, params, bs, k)
        for a, b in zip(full, acc):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (form, method, bs, k, float((a - b).abs().max()))
        assert logs_acc["loss"] == pytest.approx(logs_full["loss"], rel=1e-5, abs=1e-7)
        assert logs_acc["loss_npo"] == pytest.approx(logs_full["loss_npo"], rel=1e-5, abs=1e-7)
