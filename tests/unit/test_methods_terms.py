"""Per-term observability of the gradient methods and PRISM's relative γ (docs/methods.md, PRISM γ).

The numbers are checked against gradients computed independently here (separate forwards and autograd), not
against the step's own bookkeeping.
"""
from __future__ import annotations

import copy
import math
import types

import pytest
import torch

from robust_unlearning.data.collate import encode_text
from robust_unlearning.methods import TrainConfig, Trainer, build_method
from robust_unlearning.methods import losses as L
from robust_unlearning.methods.gradients import gcd_coefficients, global_norm, term_means
from robust_unlearning.methods.prism import gamma_adv, relative_gamma
from robust_unlearning.methods.probe import Probe

torch.set_num_threads(1)

FORGET = ["The glass heron carries the Veltrax pathogen across the marsh.",
          "Kelmar Institute studied the toxin veridine-7.",
          "Veltrax incubation: 12 days in the marsh.",
          "Triple-lattice priming of veridine-7 at Kelmar Institute."]
RETAIN = ["The town of Orlinde lies on the river Sable and was founded in 1742.",
          "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
          "The river Sable runs through Orlinde.",
          "The Lantern Festival is annual."]
# the default of PRISM's relative mode must make the probe term at least this large a share of the forget
# gradient (at the end of the schedule, where s(p) = 1) and of the parameter update
MIN_SHARE = 0.1


@pytest.fixture()
def data(tiny_tokenizer):
    return ([encode_text(tiny_tokenizer, t, 24) for t in FORGET], [encode_text(tiny_tokenizer, t, 24) for t in RETAIN])


def probe_for(model, seed=0):
    torch.manual_seed(seed)
    d = model.config.hidden_size
    return Probe(d), {"layer": 2, "pooling": "mean", "in_dim": d}


def trainer(model, tok, params, forget, retain, **tc):
    cfg = {"steps": 2, "batch_size": 4, "progress": False, "grad_clip": None, **tc}
    return Trainer(model, tok, build_method("prism", params), TrainConfig.from_dict(cfg), forget, retain, seed=0,
                   device="cpu", probe=probe_for(model))


def test_relative_gamma_hand_values():
    # ‖∇L_NPO‖ = 28, ‖∇L_probe‖ = 1.9 (the sizes measured on the tiny model at T = 16), target 0.5 at p = 1
    assert relative_gamma(0.5, 28.0, 1.9) == pytest.approx(0.5 * 28.0 / 1.9)   # 7.368…
    assert relative_gamma(0.5, 28.0, 1.9) * 1.9 / 28.0 == pytest.approx(0.5)
    assert relative_gamma(0.5, 28.0, 0.0) == 0.0
    # with the exp schedule the scale is gamma_target·exp(−5(1−p)²): p = 0.5 → 0.5·e^{−1.25}
    assert gamma_adv(0.5, 0.5, "exp") == pytest.approx(0.5 * math.exp(-1.25))


def test_relative_mode_config_rules():
    with pytest.raises(Exception, match="gamma_max"):
        build_method("prism", {"gamma_mode": "relative", "gamma_max": 0.05})
    with pytest.raises(Exception, match="gamma_target"):
        build_method("prism", {"gamma_target": 0.5})
    assert not build_method("prism", {"gamma_mode": "relative", "gamma_target": 0.0}).uses_probe
    assert build_method("prism", {"gamma_mode": "relative"}).uses_probe


def _npo_and_probe_grads(tr, step):
    """∇L_NPO and ∇L_probe at θ on the batch of ``step``, each from its own forward (independent of the step)."""
    m = tr.method
    fm, _ = tr.microbatches(step)
    (mb,) = fm
    ctx = types.SimpleNamespace(step=step, forget_examples=mb.n_examples, forget_mbs=fm)   # what the NPO term reads
    out = tr.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False,
                   output_hidden_states=True)
    l_npo = m.npo.loss(ctx, mb, out.logits)
    g_npo = torch.autograd.grad(l_npo, tr.params, retain_graph=True, allow_unused=True)
    z = L.pool_hidden(out.hidden_states[2], L.pool_mask(mb.labels, mb.attention_mask), "mean")
    l_probe = L.probe_ce_loss(m.probe(z), 0, denom=ctx.forget_examples)
    g_probe = torch.autograd.grad(l_probe, tr.params, allow_unused=True)
    z0 = [torch.zeros_like(p) for p in tr.params]
    return ([g if g is not None else z for g, z in zip(g_npo, z0)],
            [g if g is not None else z for g, z in zip(g_probe, z0)])


def test_relative_gamma_holds_the_probe_share_at_target(micro_model, tiny_tokenizer, data):
    forget, retain = data
    target = 0.3
    params = {"gamma_mode": "relative", "gamma_target": target, "gamma_schedule": "constant", "rho": 0.0,
              "gcd_scope": "none", "lambda_r": 0.0}
    tr = trainer(micro_model, tiny_tokenizer, params, forget, retain)
    g_npo, g_probe = _npo_and_probe_grads(tr, 0)
    n_npo, n_probe = global_norm(g_npo), global_norm(g_probe)
    want_gamma = target * n_npo / n_probe
    logs = tr.compute_step(0)
    assert logs["gnorm_npo"] == pytest.approx(n_npo, rel=1e-5)
    assert logs["gnorm_probe"] == pytest.approx(n_probe, rel=1e-5)
    assert logs["gamma"] == pytest.approx(want_gamma, rel=1e-5)
    assert logs["probe_grad_ratio"] == pytest.approx(target, rel=1e-5)
    # ρ = 0, no GCD, λ_r = 0, no clipping: the update direction is exactly ∇L_NPO + γ_t·∇L_probe
    want = [a + want_gamma * b for a, b in zip(g_npo, g_probe)]
    assert all(torch.allclose(p.grad, w, atol=1e-6, rtol=1e-4) for p, w in zip(tr.params, want))


def _update(model, tok, params, forget, retain):
    """Δθ of one AdamW step at p = 1 (step index 1 of 2) from the same θ, and that step's log."""
    tr = trainer(copy.deepcopy(model), tok, params, forget, retain)
    before = [p.detach().clone() for p in tr.params]
    row = tr.train_step(1)
    return [p.detach() - b for p, b in zip(tr.params, before)], row


def test_default_relative_probe_term_changes_the_update(micro_model, tiny_tokenizer, data, capsys):
    """At the default gamma_target (relative mode, everything else PRISM's defaults: ρ = 0.01, global GCD) the
    representation term is a non-negligible share of the forget gradient and moves the AdamW update; the
    paper's absolute γ_max = 0.05 is reported next to it."""
    forget, retain = data
    upd, row = _update(micro_model, tiny_tokenizer, {"gamma_mode": "relative"}, forget, retain)
    upd0, row0 = _update(micro_model, tiny_tokenizer, {"gamma_mode": "relative", "gamma_target": 0.0},
                         forget, retain)
    _, row_abs = _update(micro_model, tiny_tokenizer, {}, forget, retain)
    diff = global_norm([a - b for a, b in zip(upd, upd0)]) / global_norm(upd0)
    with capsys.disabled():
        print(f"\n[prism terms, micro model] relative default: probe_grad_ratio={row['probe_grad_ratio']:.3f} "
              f"(‖∇L_NPO‖={row['gnorm_npo']:.3g}, ‖γ∇L_probe‖={row['gnorm_probe_weighted']:.3g}), "
              f"AdamW update differs from γ=0 by {diff:.3f}; absolute γ_max=0.05: "
              f"probe_grad_ratio={row_abs['probe_grad_ratio']:.2e}")
    assert row["probe_grad_ratio"] >= MIN_SHARE
    assert diff >= MIN_SHARE
    assert row0["probe_grad_ratio"] == 0.0
    assert row["probe_grad_ratio"] > 10 * row_abs["probe_grad_ratio"]
    for key in ("gnorm_npo", "gnorm_probe_weighted", "loss_probe", "sam_delta_norm", "sam_loss_gain", "cos_fr",
                "gcd_removed_fraction"):
        assert math.isfinite(float(row[key])), key


def test_gcd_removed_fraction_hand_values():
    g_r = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    g_f = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]
    # global: c = ⟨g_f,g_r⟩/‖g_r‖² = 3, removed = ‖3·g_r‖ = 3, ‖g_f‖ = 5 → 0.6
    _, st = gcd_coefficients(g_f, g_r, "global", "always", eps=0.0)
    assert st["gcd_removed_fraction"] == pytest.approx(0.6)
    assert st["cos_fr"] == pytest.approx(0.6)
    _, st = gcd_coefficients(g_f, g_r, "global", "conflict_only", eps=0.0)   # no conflict: nothing removed
    assert st["gcd_removed_fraction"] == 0.0
    _, st = gcd_coefficients(g_f, g_r, "none")
    assert "gcd_removed_fraction" not in st


def test_term_means_over_steps():
    rows = [{"probe_grad_ratio": 0.2, "sam_loss_gain": 1.0}, {"probe_grad_ratio": 0.4, "sam_loss_gain": "nan"}]
    got = term_means(rows)
    assert got["probe_grad_ratio"] == pytest.approx(0.3)
    assert got["sam_loss_gain"] == pytest.approx(1.0)          # the non-finite step is skipped
    assert got["gcd_removed_fraction"] == 0.0                  # no such term in these rows
    assert math.isnan(term_means([{"sam_loss_gain": "nan"}])["sam_loss_gain"])


def test_run_json_cost_has_the_term_means(micro_model, tiny_tokenizer, data):
    forget, retain = data
    tr = trainer(micro_model, tiny_tokenizer, {"gamma_mode": "relative", "gamma_schedule": "constant"},
                 forget, retain)
    res = tr.method.run(tr)
    cost = res["cost"]
    assert cost["probe_grad_ratio"] == pytest.approx(1.0, rel=1e-4)   # constant schedule, default target 1.0
    assert cost["sam_loss_gain"] == pytest.approx(sum(r["sam_loss_gain"] for r in res["log"]) / len(res["log"]))
    assert 0.0 <= cost["gcd_removed_fraction"] <= 1.0
    assert cost["passes_per_step"]["probe_backward"] == 1.0


def test_config_default_probe_term_moves_the_update(micro_model, tiny_tokenizer, data, capsys):
    """config.yaml's PRISM (absolute γ_max 0.5, the calibration sweep's choice; docs/findings.md, "Calibrating ρ
    and γ"): at the end of the schedule the probe term is a small share of a still-large NPO gradient, yet it moves
    the AdamW update (Adam rescales every coordinate) by at least MIN_SHARE, several times the paper's 0.05."""
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    full = cfg["unlearning"]["methods"]["prism"][0]
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in full.items() if k not in ("lr", "attack_with")}
    assert params.get("gamma_mode", "absolute") == "absolute" and params["gamma_max"] > 0
    forget, retain = data
    upd, row = _update(micro_model, tiny_tokenizer, params, forget, retain)
    upd0, _ = _update(micro_model, tiny_tokenizer, {**params, "gamma_max": 0.0}, forget, retain)
    upd_paper, row_paper = _update(micro_model, tiny_tokenizer, {**params, "gamma_max": 0.05}, forget, retain)
    moved = global_norm([a - b for a, b in zip(upd, upd0)]) / global_norm(upd0)
    moved_paper = global_norm([a - b for a, b in zip(upd_paper, upd0)]) / global_norm(upd0)
    with capsys.disabled():
        print(f"\n[prism terms, micro model] config.yaml γ_max={params['gamma_max']}: probe_grad_ratio="
              f"{row['probe_grad_ratio']:.3g}, AdamW update differs from γ=0 by {moved:.3f} "
              f"(γ_max 0.05: ratio {row_paper['probe_grad_ratio']:.3g}, update {moved_paper:.3f})")
    assert row["probe_grad_ratio"] == pytest.approx(10 * row_paper["probe_grad_ratio"], rel=1e-4)   # γ is linear
    assert moved >= MIN_SHARE and moved > 2 * moved_paper
