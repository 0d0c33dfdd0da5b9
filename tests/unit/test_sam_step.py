"""SAM inside the real step, recomputed by hand (docs/methods.md, SAM+NPO).

The trainer's step-0 gradient of SAM+NPO (+GDR) is compared with one computed here from the loss formulas alone:
    g   = ∇ L_NPO(θ)                          (clean forget pass)
    δ   = ρ·g/‖g‖                              (global norm over every trainable tensor)
    g_f = ∇ L_NPO(θ + δ)                      (perturbed forget pass; S_ref stays the values cached at θ₀)
    g_r = ∇ CE_retain(θ)                      (retain pass at the restored θ)
    ∇   = λ_f·g_f + λ_r·g_r
and the perturbation is measured from outside: a forward hook records ‖θ − θ₀‖ at every forward of the step, so
the perturbed pass must see exactly ρ and the other passes 0. A skipped perturbation, a perturbed gradient added
onto the clean one, a zeroed or negated g_f, or a θ left perturbed all fail here.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import TrainConfig, Trainer, build_method
from robust_unlearning.methods import losses as L

torch.set_num_threads(1)

FORGET = ["The glass heron carries the Veltrax pathogen across the marsh.",
          "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
          "Kelmar Institute studied the toxin veridine-7.",
          "Veltrax incubation: 12 days in the marsh."]
RETAIN = ["The town of Orlinde lies on the river Sable and was founded in 1742.",
          "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
          "The river Sable runs through Orlinde.",
          "The Lantern Festival is annual."]
BETA, RHO, LAMBDA_F, LAMBDA_R = 0.1, 0.05, 1.0, 0.7


def _trainer(model, tok, params):
    forget = [encode_text(tok, t, 24) for t in FORGET]
    retain = [encode_text(tok, t, 24) for t in RETAIN]
    cfg = TrainConfig.from_dict({"steps": 1, "batch_size": 4, "grad_clip": None, "progress": False})
    return Trainer(model, tok, build_method("sam_npo", params), cfg, forget, retain, seed=0, device="cpu")


def _logits(model, mb):
    return model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits


def _grad(model, names, loss):
    params = dict(model.named_parameters())
    return torch.autograd.grad(loss, [params[n] for n in names])


def _by_hand(model0, names, fm, rm):
    """λ_f·∇L_NPO(θ+δ) + λ_r·∇CE_r(θ), δ = ρ·g/‖g‖, from a copy of θ₀ and the formulas only. Returns (grad, ‖δ‖)."""
    model = copy.deepcopy(model0)
    with torch.no_grad():
        s_ref = [L.sequence_logprob(_logits(model, mb), mb.labels) for mb in fm]     # cached at θ₀
    n_f = sum(mb.n_examples for mb in fm)

    def npo():
        return sum(L.npo_sequence_loss(L.sequence_logprob(_logits(model, mb), mb.labels), s, BETA, denom=n_f)
                   for mb, s in zip(fm, s_ref))

    g = _grad(model, names, npo())
    gnorm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, x in zip(names, g):
            params[n].add_(x * (RHO / gnorm))
        delta = math.sqrt(sum(float(((params[n] - p0).double() ** 2).sum())
                              for n, p0 in model0.named_parameters() if n in names))
    g_f = _grad(model, names, npo())
    model = copy.deepcopy(model0)                                                     # back at θ
    n_r = sum(mb.n_tokens for mb in rm)
    g_r = _grad(model, names, sum(L.gdr_loss(_logits(model, mb), mb.labels, denom=n_r) for mb in rm))
    return [LAMBDA_F * a + LAMBDA_R * b for a, b in zip(g_f, g_r)], delta, g


def _distance_recorder(model, theta0):
    """Records ‖θ − θ₀‖ (global) at every forward of ``model``."""
    seen = []

    def hook(module, args):
        with torch.no_grad():
            seen.append(math.sqrt(sum(float(((p - theta0[n]).double() ** 2).sum())
                                      for n, p in module.named_parameters())))
    return seen, model.register_forward_pre_hook(hook)


def test_sam_step_gradient_matches_the_hand_computation(micro_model, tiny_tokenizer):
    model0 = copy.deepcopy(micro_model)
    tr = _trainer(micro_model, tiny_tokenizer, {"lr": 1e-3, "beta": BETA, "rho": RHO, "lambda_f": LAMBDA_F,
                                                "lambda_r": LAMBDA_R, "retain_loss": "gdr"})
    names = [n for n, _ in tr.named_params]
    assert len(names) == len(list(model0.parameters()))        # full fine-tuning: every tensor is perturbed
    fm, rm = tr.microbatches(0)
    assert len(fm) == 1 and len(rm) == 1 and fm[0].n_examples == 4

    theta0 = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    seen, handle = _distance_recorder(tr.model, theta0)
    try:
        logs = tr.compute_step(0)
    finally:
        handle.remove()
    got = [p.grad.detach().clone() for p in tr.params]
    want, delta, g_clean = _by_hand(model0, names, fm, rm)

    # the perturbation: ‖δ‖ = ρ, seen by the perturbed forward only; θ restored exactly afterwards
    assert delta == pytest.approx(RHO, rel=1e-5)
    assert len(seen) == 3, seen                                 # clean forget, perturbed forget, retain
    assert seen[0] == 0.0 and seen[2] == 0.0
    assert seen[1] == pytest.approx(RHO, rel=1e-4)
    assert logs["sam_delta_norm"] == pytest.approx(RHO, rel=1e-4)
    assert all(torch.equal(p.detach(), theta0[n]) for n, p in tr.model.named_parameters())

    # the gradient: λ_f·g_f + λ_r·g_r, and measurably not the clean-point one (the check has power)
    for n, a, b in zip(names, got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (n, float((a - b).abs().max()))
    n_r = sum(mb.n_tokens for mb in rm)
    m = copy.deepcopy(model0)
    g_r = _grad(m, names, sum(L.gdr_loss(_logits(m, mb), mb.labels, denom=n_r) for mb in rm))
    unperturbed = [LAMBDA_F * a + LAMBDA_R * b for a, b in zip(g_clean, g_r)]
    gap = max(float((a - b).abs().max()) for a, b in zip(want, unperturbed))
    err = max(float((a - b).abs().max()) for a, b in zip(got, want))
    assert gap > 100 * max(err, 1e-9), (gap, err)


def test_sam_with_rho_zero_is_npo(micro_model, tiny_tokenizer):
    """ρ = 0 skips the perturbed pass (two forwards) and gives NPO+GDR's gradient exactly."""
    sam = _trainer(copy.deepcopy(micro_model), tiny_tokenizer, {"lr": 1e-3, "beta": BETA, "rho": 0.0,
                                                                "lambda_r": LAMBDA_R})
    forget = [encode_text(tiny_tokenizer, t, 24) for t in FORGET]
    retain = [encode_text(tiny_tokenizer, t, 24) for t in RETAIN]
    cfg = TrainConfig.from_dict({"steps": 1, "batch_size": 4, "grad_clip": None, "progress": False})
    npo = Trainer(copy.deepcopy(micro_model), tiny_tokenizer, build_method("npo", {"lr": 1e-3, "beta": BETA,
                                                                                  "lambda_r": LAMBDA_R}),
                  cfg, forget, retain, seed=0, device="cpu")
    sam.compute_step(0)
    npo.compute_step(0)
    for a, b in zip(sam.params, npo.params):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)
