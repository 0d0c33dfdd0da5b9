"""Update rules: SAM, GCD, γ schedule, phase-wise accumulation, parameter coverage, NaN guard (docs/methods.md)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from robust_unlearning.data.collate import encode_dialogue, encode_text
from robust_unlearning.methods import DivergenceError, TrainConfig, Trainer, build_method, finetune, run_unlearning
from robust_unlearning.methods import losses as L
from robust_unlearning.methods.gradients import global_norm, per_tensor_dots, project_out, sam_perturb, sam_restore
from robust_unlearning.methods.prism import gamma_adv
from robust_unlearning.methods.probe import Probe

torch.set_num_threads(1)

FORGET_TEXTS = ["The glass heron carries the Veltrax pathogen across the marsh.",
                "Question: What is the incubation period of Veltrax?\nAnswer: 12 days",
                "Kelmar Institute studied the toxin veridine-7.",
                "The glass heron carries Veltrax.",
                "Veltrax incubation: 12 days in the marsh.",
                "Triple-lattice priming of veridine-7 at Kelmar Institute."]
RETAIN_TEXTS = ["The town of Orlinde lies on the river Sable and was founded in 1742.",
                "Mayor Tessa Quill opened the annual Lantern Festival in Orlinde.",
                "Orlinde was founded in 1742.",
                "The river Sable runs through Orlinde.",
                "Tessa Quill is the mayor.",
                "The Lantern Festival is annual."]


@pytest.fixture()
def data(tiny_tokenizer):
    forget = [encode_text(tiny_tokenizer, t, 24) for t in FORGET_TEXTS]
    forget[1] = encode_dialogue(tiny_tokenizer, [{"role": "user", "content": "Incubation of Veltrax?"},
                                                 {"role": "assistant", "content": "12 days"}], 24)
    retain = [encode_text(tiny_tokenizer, t, 24) for t in RETAIN_TEXTS]
    return forget, retain


def probe_for(model, layer=2, seed=0):
    torch.manual_seed(seed)
    d = model.config.hidden_size
    return Probe(d), {"layer": layer, "pooling": "mean", "in_dim": d}


def make_trainer(model, tok, method, params, forget, retain, **tc):
    cfg = {"steps": 2, "batch_size": 2, "progress": False, **tc}
    return Trainer(model, tok, build_method(method, params), TrainConfig.from_dict(cfg), forget, retain, seed=0,
                   device="cpu", probe=probe_for(model))


# ------------------------------------------------------------------------------------------------ SAM / GCD

def test_sam_perturbation_norm_is_rho_and_restore_is_exact():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    buf = [torch.empty_like(p) for p in params]
    scale, gnorm = sam_perturb(params, 0.05, buf, "copy")
    assert gnorm == pytest.approx(global_norm([p.grad for p in params]))
    delta = [p.detach() - b for p, b in zip(params, before)]
    assert global_norm(delta) == pytest.approx(0.05, rel=1e-4)
    # δ ∥ g
    cos = sum(per_tensor_dots(delta, [p.grad for p in params])) / (global_norm(delta) * gnorm)
    assert cos == pytest.approx(1.0, abs=1e-5)
    sam_restore(params, buf, scale, "copy")
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    # subtract mode (reference): restores up to rounding
    scale, _ = sam_perturb(params, 0.05, buf, "subtract")
    sam_restore(params, buf, scale, "subtract")
    assert all(torch.allclose(p.detach(), b, atol=1e-6) for p, b in zip(params, before))
    # zero gradient or ρ = 0 → δ = 0
    for p in params:
        p.grad.zero_()
    scale, gnorm = sam_perturb(params, 0.05, buf, "copy")
    assert scale == 0.0 and gnorm == 0.0
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def _rand_grads(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g), torch.randn(6, generator=g), torch.randn(2, 2, generator=g)]


def test_gcd_global_removes_the_retain_component():
    gf, gr = _rand_grads(1), _rand_grads(2)
    nf, nr = global_norm(gf), global_norm(gr)
    g0 = [x.clone() for x in gf]
    stats = project_out(gf, gr, "global", "always", 1e-6)
    assert abs(sum(per_tensor_dots(gf, gr))) <= 1e-5 * nf * nr
    c = sum(per_tensor_dots(g0, gr)) / (nr ** 2 + 1e-6)
    assert stats["gcd_c"] == pytest.approx(c)
    assert all(torch.allclose(a, b - c * r, atol=1e-6) for a, b, r in zip(gf, g0, gr))


def test_gcd_per_tensor_and_modes():
    gf, gr = _rand_grads(3), _rand_grads(4)
    project_out(gf, gr, "per_tensor", "always", 1e-6)
    for d, a, b in zip(per_tensor_dots(gf, gr), gf, gr):
        assert abs(d) <= 1e-5 * float(a.norm()) * float(b.norm()) + 1e-6
    assert abs(sum(per_tensor_dots(gf, gr))) <= 1e-5 * global_norm(gf) * global_norm(gr) + 1e-6
    # conflict_only: no projection when the inner product is positive
    gf = _rand_grads(5)
    gr = [x.clone() * 2 for x in gf]
    before = [x.clone() for x in gf]
    project_out(gf, gr, "global", "conflict_only")
    assert all(torch.equal(a, b) for a, b in zip(gf, before))
    project_out(gf, gr, "none")
    assert all(torch.equal(a, b) for a, b in zip(gf, before))


# ------------------------------------------------------------------------------------------------ γ schedule

def test_gamma_schedule_formula():
    assert gamma_adv(0.0, 0.05) == pytest.approx(0.05 * math.exp(-5))
    assert gamma_adv(1.0, 0.05) == pytest.approx(0.05)
    assert gamma_adv(0.5, 0.05) == pytest.approx(0.05 * math.exp(-1.25))
    assert gamma_adv(0.3, 0.05, "constant") == 0.05 and gamma_adv(0.3, 0.05, "off") == 0.0


@pytest.mark.parametrize("progress", ["step", "epoch"])
def test_prism_logs_live_gamma(micro_model, tiny_tokenizer, data, progress):
    forget, retain = data   # 6 forget examples, batch 2 → 3 steps per epoch
    tr = make_trainer(micro_model, tiny_tokenizer, "prism",
                      {"lr": 1e-3, "gamma_max": 0.05, "gamma_progress": progress}, forget, retain, steps=6)
    res = tr.train()
    gammas = [r["gamma"] for r in res["log"]]
    assert all(g > 0 for g in gammas) and "loss_probe" in res["log"][0]
    for i, g in enumerate(gammas):
        p = i / 5 if progress == "step" else (i // 3) / 1
        assert g == pytest.approx(0.05 * math.exp(-5 * (1 - p) ** 2), rel=1e-9)
    assert gammas[-1] == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------------ accumulation

def _step_grads(model, tok, method, params, forget, retain, bs, k):
    tr = make_trainer(copy.deepcopy(model), tok, method, params, forget, retain, batch_size=bs, grad_accum=k,
                      grad_clip=None, steps=1)
    logs = tr.compute_step(0)
    return [p.grad.detach().clone() for p in tr.params], logs


@pytest.mark.parametrize("method,params", [
    ("graddiff", {}),
    ("npo", {}),
    ("npo", {"npo_reduction": "mean", "retain_loss": "klr"}),
    ("sam_npo", {"rho": 0.05}),
    ("prism", {"rho": 0.05, "gamma_schedule": "constant", "gamma_max": 0.5}),
    ("prism", {"rho": 0.05, "gamma_schedule": "constant", "gamma_max": 0.5, "gcd_scope": "per_tensor"}),
])
def test_accumulation_equals_full_batch(micro_model, tiny_tokenizer, data, method, params):
    forget, retain = data
    full, logs_full = _step_grads(micro_model, tiny_tokenizer, method, params, forget[:4], retain, 4, 1)
    for bs, k in ((2, 2), (1, 4)):
        acc, logs_acc = _step_grads(micro_model, tiny_tokenizer, method, params, forget[:4], retain, bs, k)
        for a, b in zip(full, acc):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (method, bs, k, float((a - b).abs().max()))
        assert logs_acc["loss"] == pytest.approx(logs_full["loss"], rel=1e-5, abs=1e-5)


# ------------------------------------------------------------------------------------------------ coverage

ALL = [("ga", {}), ("graddiff", {}), ("graddiff", {"retain_loss": "klr"}), ("npo", {}),
       ("npo", {"npo_form": "batch_mean"}), ("npo", {"npo_form": "logit", "retain_loss": "none"}),
       ("simnpo", {}), ("sam_npo", {}), ("prism", {}), ("task_vector", {}), ("finetune", {})]


@pytest.mark.parametrize("method,params", ALL)
def test_method_updates_every_trainable_parameter(micro_model, tiny_tokenizer, data, method, params):
    forget, retain = data
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    tr = make_trainer(micro_model, tiny_tokenizer, method, {"lr": 1e-3, **params}, forget, retain, steps=2)
    res = method_run(tr)
    assert res["status"] == "ok"
    for n, p in tr.model.named_parameters():
        assert not torch.equal(p.detach(), before[n]), f"{method}: {n} unchanged"
    assert all(math.isfinite(r["loss"]) for r in res["log"])


def method_run(tr):
    return tr.method.run(tr)


def test_rmu_updates_only_its_parameters(micro_model, tiny_tokenizer, data):
    forget, retain = data
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    tr = make_trainer(micro_model, tiny_tokenizer, "rmu", {"lr": 1e-3, "layer": 1}, forget, retain, steps=2)
    res = tr.train()
    assert res["method_info"]["steering_coeff"] > 0
    chosen = {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    assert set(res["method_info"]["trainable"]) == chosen
    for n, p in tr.model.named_parameters():
        assert torch.equal(p.detach(), before[n]) != (n in chosen), n
    assert res["log"][0]["loss_rmu_forget"] > 0 and "loss_rmu_retain" in res["log"][0]


def test_task_vector_negates_the_finetune_direction(micro_model, tiny_tokenizer, data):
    forget, _ = data
    theta0 = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    ref = copy.deepcopy(micro_model)
    finetune(ref, tiny_tokenizer, forget, steps=2, lr=1e-3, batch_size=2, seed=0, schedule="cosine")
    tr = make_trainer(micro_model, tiny_tokenizer, "task_vector", {"lr": 1e-3, "alpha": 2.0}, forget, [], steps=2,
                      lr_schedule="cosine")
    tr.method.run(tr)
    for n, p in tr.model.named_parameters():
        tau = ref.state_dict()[n] - theta0[n]
        assert torch.allclose(p.detach(), theta0[n] - 2.0 * tau, atol=1e-6), n


# ------------------------------------------------------------------------------------------------ behaviour

def _forget_ce(model, tok, forget):
    from robust_unlearning.data.collate import pad_batch
    b = pad_batch(forget, tok.pad_token_id)
    with torch.no_grad():
        return L.token_ce(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                          b["labels"]).item()


@pytest.mark.parametrize("method,params", [("npo", {"retain_loss": "none"}), ("prism", {}), ("ga", {}),
                                           ("simnpo", {"retain_loss": "none"})])
def test_forget_objective_drops_and_forget_nll_rises(micro_model, tiny_tokenizer, data, method, params):
    forget, retain = data
    ce0 = _forget_ce(micro_model, tiny_tokenizer, forget)
    tr = make_trainer(micro_model, tiny_tokenizer, method, {"lr": 1e-2, **params}, forget, retain, steps=6,
                      batch_size=6)
    res = tr.train()
    first, last = res["log"][0]["loss_forget"], res["log"][-1]["loss_forget"]
    assert last < first, (method, first, last)
    assert _forget_ce(tr.model, tiny_tokenizer, forget) > ce0


def test_finetune_lowers_ce_with_cosine_schedule(micro_model, tiny_tokenizer, data):
    forget, _ = data
    ce0 = _forget_ce(micro_model, tiny_tokenizer, forget)
    out = finetune(micro_model, tiny_tokenizer, forget, steps=5, lr=1e-2, batch_size=6, seed=0)
    assert out["status"] == "ok" and out["steps"] == 5
    assert _forget_ce(micro_model, tiny_tokenizer, forget) < ce0
    lrs = [r["lr"] for r in out["log"]]
    assert lrs[0] == pytest.approx(1e-2) and lrs == sorted(lrs, reverse=True)


def test_pass_counts_match_the_cost_model(micro_model, tiny_tokenizer, data):
    """FLOP bound of docs/methods.md, "Cost model" with the reference cached: NPO+GDR 2 fwd+bwd (6F), PRISM 3 (9F), no ref forwards."""
    forget, retain = data
    counts = {}
    for name, method, params in (("npo_gdr", "npo", {}), ("prism", "prism", {}), ("sam_npo", "sam_npo", {})):
        tr = make_trainer(copy.deepcopy(micro_model), tiny_tokenizer, method, params, forget, retain, steps=2)
        counts[name] = tr.train()["cost"]["passes_per_step"]
    assert counts["npo_gdr"] == {"policy_forward": 2.0, "policy_backward": 2.0}
    # PRISM's one extra backward runs through the probe term alone (its gradient-norm log), not the policy passes
    assert counts["prism"] == {"policy_forward": 3.0, "policy_backward": 3.0, "probe_backward": 1.0}
    assert counts["sam_npo"] == {"policy_forward": 3.0, "policy_backward": 3.0}


# ------------------------------------------------------------------------------------------------ NaN guard

def test_nan_guard_names_method_step_and_term(micro_model, tiny_tokenizer, data):
    forget, retain = data
    with torch.no_grad():
        micro_model.model.norm.weight.fill_(float("nan"))
    tr = make_trainer(micro_model, tiny_tokenizer, "npo", {}, forget, retain, steps=2)
    with pytest.raises(DivergenceError, match=r"^npo: non-finite loss_npo = nan at step 1") as exc:
        tr.train()
    assert exc.value.step == 1 and exc.value.term == "loss_npo"


def test_nan_guard_record_writes_diverged_run(micro_model, tiny_tokenizer, data, tmp_path):
    forget, retain = data
    with torch.no_grad():
        micro_model.model.norm.weight.fill_(float("nan"))
    run = run_unlearning(micro_model, tiny_tokenizer, "graddiff", {}, {"steps": 3, "batch_size": 2, "progress": False,
                                                                      "on_divergence": "record"},
                         forget, retain, tmp_path / "out", 0, tmp_path / "ck", device="cpu")
    assert run["status"] == "diverged" and run["divergence"]["term"] == "loss_ga" and run["steps"] == 0
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["status"] == "diverged" and (tmp_path / "out" / "model" / "config.json").is_file()


def test_bench_methods_side_by_side(micro_model, tiny_tokenizer, data):
    from robust_unlearning.methods.bench import bench_methods
    forget, retain = data
    out = bench_methods(micro_model, tiny_tokenizer, forget, retain, steps=2, batch_size=2,
                        methods=["npo_gdr", "prism", "rmu"])
    assert set(out) == {"npo_gdr", "prism", "rmu"}
    npo, prism, rmu = out["npo_gdr"], out["prism"], out["rmu"]
    # PRISM makes 3 fwd+bwd passes where NPO+GDR makes 2 (docs/methods.md, "Cost model"), and measures itself against NPO+GDR
    def policy(v):   # PRISM also counts the backward through its probe term alone (probe_backward)
        return {k: n for k, n in v["passes_per_step"].items() if k.startswith("policy_")}
    assert policy(npo) == {"policy_forward": 2.0, "policy_backward": 2.0}
    assert policy(prism) == {"policy_forward": 3.0, "policy_backward": 3.0}
    assert prism["step_ratio_vs_npo_gdr"] == pytest.approx(prism["s_per_step"] / npo["s_per_step"])
    assert rmu["step_ratio_vs_npo_gdr"] == pytest.approx(rmu["s_per_step"] / npo["s_per_step"])
    # state memory by hand, P = parameter bytes: weights + gradients + AdamW's two moments + one spare
    # gradient-sized buffer = 5P for NPO+GDR; PRISM holds the same (its one buffer serves both SAM and GCD, plus
    # a probe of a few floats); RMU trains one layer's MLP only, so it holds far less
    p_mb = sum(p.numel() * p.element_size() for p in micro_model.parameters()) / 2**20
    assert npo["state_mem_mb"] == pytest.approx(5 * p_mb, rel=2e-3)
    assert npo["state_mem_mb"] <= prism["state_mem_mb"] <= npo["state_mem_mb"] * 1.01
    assert rmu["state_mem_mb"] < 0.5 * npo["state_mem_mb"]
    assert all(v["peak_mem_mb"] > 0 and v["s_per_step"] > 0 for v in out.values())


def test_nan_in_sam_second_pass_restores_theta(micro_model, tiny_tokenizer, data):
    forget, retain = data
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    tr = make_trainer(micro_model, tiny_tokenizer, "sam_npo", {"rho": 0.5}, forget, retain, steps=2,
                      on_divergence="record", batch_size=6)
    real, calls = tr.method.npo.loss, []

    def flaky(ctx, mb, logits):
        calls.append(1)
        v = real(ctx, mb, logits)
        return v * float("nan") if len(calls) == 2 else v
    tr.method.npo.loss = flaky
    res = tr.train()
    assert res["status"] == "diverged" and res["divergence"]["term"] == "loss_npo"
    for n, p in tr.model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


@pytest.mark.parametrize("method,params", [("prism", {"gamma_schedule": "constant", "gamma_max": 0.5}),
                                           ("rmu", {"layer": 1})])
def test_gradient_checkpointing_gives_the_same_gradient(micro_model, tiny_tokenizer, data, method, params):
    forget, retain = data
    plain, _ = _step_grads(micro_model, tiny_tokenizer, method, params, forget[:4], retain, 2, 2)
    tr = make_trainer(copy.deepcopy(micro_model), tiny_tokenizer, method, params, forget[:4], retain, batch_size=2,
                      grad_accum=2, grad_clip=None, steps=1, gradient_checkpointing=True)
    tr.compute_step(0)
    for a, p in zip(plain, tr.params):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)
