"""Losses (docs/methods.md) against hand computations on tiny tensors; configs and registry."""
from __future__ import annotations

import math

import pytest
import torch

from robust_unlearning.methods import METHODS, ConfigError, TrainConfig, get_method
from robust_unlearning.methods import losses as L

torch.set_num_threads(1)

# one sequence of 3 tokens, vocab 3; labels aligned with inputs (position 0 never predicted)
LOGITS = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]])
LABELS = torch.tensor([[0, 2, 1]])


def lsm(row, k):
    return row[k] - math.log(sum(math.exp(v) for v in row))


L1 = lsm([1.0, 2.0, 0.5], 2)   # log p(y_1 = 2) from position 0
L2 = lsm([0.0, -1.0, 3.0], 1)  # log p(y_2 = 1) from position 1


def test_token_logprobs_causal_shift():
    logp, mask = L.token_logprobs(LOGITS, LABELS)
    assert logp.dtype == torch.float32 and mask.tolist() == [[True, True]]
    assert logp[0, 0].item() == pytest.approx(L1, abs=1e-6)
    assert logp[0, 1].item() == pytest.approx(L2, abs=1e-6)


def test_masked_labels_and_sequence_forms():
    labels = torch.tensor([[0, -100, 1]])
    assert L.sequence_logprob(LOGITS, labels, "sum").item() == pytest.approx(L2, abs=1e-6)
    assert L.sequence_logprob(LOGITS, LABELS, "sum").item() == pytest.approx(L1 + L2, abs=1e-6)
    assert L.sequence_logprob(LOGITS, LABELS, "mean").item() == pytest.approx((L1 + L2) / 2, abs=1e-6)
    assert L.target_counts(labels).tolist() == [1]


def test_bf16_logits_upcast():
    s32 = L.sequence_logprob(LOGITS, LABELS)
    s16 = L.sequence_logprob(LOGITS.bfloat16(), LABELS)
    assert s16.dtype == torch.float32 and abs(s16.item() - s32.item()) < 0.05


def test_token_ce_is_token_pooled_not_mean_of_means():
    logits = torch.cat([LOGITS, LOGITS])
    labels = torch.tensor([[0, 2, 1], [0, -100, 1]])
    ce = L.token_ce(logits, labels).item()
    assert ce == pytest.approx(-(L1 + L2 + L2) / 3, abs=1e-6)
    mean_of_means = -((L1 + L2) / 2 + L2) / 2
    assert abs(ce - mean_of_means) > 1e-3
    assert L.ga_loss(logits, labels).item() == pytest.approx(-ce, abs=1e-6)
    assert L.gdr_loss(logits, labels).item() == pytest.approx(ce, abs=1e-6)
    # logical-batch denominator: the two halves sum to the full-batch loss
    half = L.token_ce(logits[:1], labels[:1], denom=3) + L.token_ce(logits[1:], labels[1:], denom=3)
    assert half.item() == pytest.approx(ce, abs=1e-6)


def test_klr_per_token_mean():
    ref = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 2, 1]])

    def kl(pr, pt):  # KL(p_ref || p_theta) from logits rows
        zr = sum(math.exp(v) for v in pr)
        zt = sum(math.exp(v) for v in pt)
        return sum(math.exp(a) / zr * ((a - math.log(zr)) - (b - math.log(zt))) for a, b in zip(pr, pt))

    want = (kl([0, 0, 0], [1, 2, 0.5]) + kl([1, 0, 0], [0, -1, 3])) / 2
    assert L.klr_loss(LOGITS, ref, labels).item() == pytest.approx(want, abs=1e-6)
    assert L.klr_loss(LOGITS, LOGITS, labels).item() == pytest.approx(0.0, abs=1e-7)
    # MUSE replication: raw logits into kl_div(batchmean, log_target) = Σ e^{z_ref}(z_ref − z_θ) / B
    raw = sum(math.exp(r) * (r - t) for rr, tt in zip(ref[0].tolist(), LOGITS[0].tolist()) for r, t in zip(rr, tt))
    assert L.klr_loss(LOGITS, ref, labels, form="muse_raw_logits").item() == pytest.approx(raw, rel=1e-5)


def sp(u):
    return math.log1p(math.exp(u))


def test_npo_sequence_sum_and_mean():
    s_t, s_r, beta = torch.tensor([-3.0, -5.0]), torch.tensor([-2.0, -6.0]), 0.5
    want = (2 / beta) * (sp(beta * (-1.0)) + sp(beta * 1.0)) / 2
    assert L.npo_sequence_loss(s_t, s_r, beta).item() == pytest.approx(want, abs=1e-6)
    # at θ = θ_ref the loss is (2/β) log 2
    assert L.npo_sequence_loss(s_t, s_t, beta).item() == pytest.approx(2 / beta * math.log(2), abs=1e-6)
    # mean reduction = same formula on S̄
    n = torch.tensor([2.0, 4.0])
    want_mean = (2 / beta) * (sp(beta * (-1.0 / 2)) + sp(beta * (1.0 / 4))) / 2
    assert L.npo_sequence_loss(s_t / n, s_r / n, beta).item() == pytest.approx(want_mean, abs=1e-6)
    # gradient weight W = 2σ(βΔ): dL/dS = W / B
    s = s_t.clone().requires_grad_(True)
    L.npo_sequence_loss(s, s_r, beta).backward()
    sig = lambda u: 1 / (1 + math.exp(-u))  # noqa: E731
    assert s.grad.tolist() == pytest.approx([2 * sig(-0.5) / 2, 2 * sig(0.5) / 2], abs=1e-6)


def test_npo_batch_mean_and_logit_forms():
    beta = 0.2
    v = L.npo_batch_mean_loss(torch.tensor(2.5), torch.tensor(2.0), beta).item()
    assert v == pytest.approx((2 / beta) * sp(beta * (2.0 - 2.5)), abs=1e-6)
    z = torch.tensor([[[1.0, 0.0]]])
    zr = torch.tensor([[[0.0, 0.0]]])
    want = (2 / beta) * (sp(beta * 1.0) + sp(0.0)) / 2
    assert L.npo_logit_loss(z, zr, beta).item() == pytest.approx(want, abs=1e-6)


def test_simnpo():
    s_mean, beta, gamma = torch.tensor([-1.0, -3.0]), 2.0, 0.5
    want = (2 / beta) * (sp(beta * -1.0 + gamma) + sp(beta * -3.0 + gamma)) / 2
    assert L.simnpo_loss(s_mean, beta, gamma).item() == pytest.approx(want, abs=1e-6)


def test_rmu_mse_masked_and_unmasked():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    control = torch.tensor([1.0, 0.0])
    # unmasked: ((0)^2 + 2^2 + 2^2 + 4^2) / 4
    assert L.rmu_forget_loss(h, control).item() == pytest.approx((0 + 4 + 4 + 16) / 4)
    mask = torch.tensor([[1, 0]])
    assert L.rmu_forget_loss(h, control, mask).item() == pytest.approx((0 + 4) / 2)
    h_ref = torch.zeros_like(h)
    assert L.rmu_retain_loss(h, h_ref, mask).item() == pytest.approx((1 + 4) / 2)


def test_probe_ce_and_pooling():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    want = -(lsm([2.0, 0.0], 0) + lsm([0.0, 1.0], 0)) / 2
    assert L.probe_ce_loss(logits).item() == pytest.approx(want, abs=1e-6)
    h = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    att = torch.tensor([[1, 1, 1, 0]])
    labels = torch.tensor([[-100, 5, 6, -100]])   # response positions 1, 2
    m = L.pool_mask(labels, att)
    assert L.pool_hidden(h, m, "mean").tolist() == [[(3 + 6) / 2, (4 + 7) / 2, (5 + 8) / 2]]
    assert L.pool_hidden(h, m, "last").tolist() == [[6.0, 7.0, 8.0]]
    # a row without labels falls back to the attention mask
    m2 = L.pool_mask(torch.full((1, 4), -100), att)
    assert m2.tolist() == [[True, True, True, False]]


# ------------------------------------------------------------------------------------------------ configs

def test_registry_has_all_methods():
    get_method("ga")
    assert {"ga", "graddiff", "npo", "simnpo", "rmu", "sam_npo", "task_vector", "prism", "finetune"} <= set(METHODS)
    with pytest.raises(ConfigError, match="^method: unknown method 'prism_npo_gdr'"):
        get_method("prism_npo_gdr")


@pytest.mark.parametrize("method,params,key", [
    ("npo", {"rho": 0.01}, "rho"),                                # unknown for NPO (D2)
    ("npo", {"lr": 0}, "lr"),
    ("npo", {"beta": -1.0}, "beta"),
    ("npo", {"npo_form": "seq"}, "npo_form"),
    ("npo", {"npo_form": "logit", "npo_reduction": "mean"}, "npo_reduction"),
    ("npo", {"npo_form": "logit", "ref_logprobs": "cache"}, "ref_logprobs"),
    ("npo", {"retain_loss": "none", "lambda_r": 2.0}, "lambda_r"),
    ("graddiff", {"klr_form": "muse_raw_logits"}, "klr_form"),
    ("prism", {"rho": -0.1}, "rho"),
    ("prism", {"gcd_scope": "none", "gcd_mode": "conflict_only"}, "gcd_mode"),
    ("prism", {"lr": "1e-5"}, "lr"),
    ("rmu", {"steering_coeff": 6.5, "kappa": 4.0}, "kappa"),
    ("sam_npo", {"gamma_max": 0.1}, "gamma_max"),
])
def test_config_errors_name_the_key(method, params, key):
    with pytest.raises(ConfigError) as exc:
        get_method(method).Config.from_dict(params)
    assert exc.value.key == key and str(exc.value).startswith(key)
    assert isinstance(exc.value, ValueError)


def test_config_defaults_and_resolution():
    c = get_method("npo").Config.from_dict({"lr": 1})
    assert c.lr == 1.0 and isinstance(c.lr, float)
    assert c.ref_logprobs == "cache" and c.npo_form == "sequence" and c.npo_reduction == "sum"
    assert get_method("npo").Config.from_dict({"npo_form": "logit"}).ref_logprobs == "per_step"
    p = get_method("prism").Config.from_dict({"prism_compat": "released"})
    assert (p.npo_form, p.gcd_scope, p.probe_pooling, p.gamma_schedule, p.ref_logprobs, p.sam_restore) == \
        ("logit", "per_tensor", "last", "off", "per_pass", "subtract")
    p = get_method("prism").Config.from_dict({})
    assert (p.gcd_scope, p.gamma_schedule, p.gamma_progress, p.rho) == ("global", "exp", "step", 0.01)


def test_train_config_validation():
    assert TrainConfig.from_dict({"steps": 3}).grad_clip == 1.0
    with pytest.raises(ConfigError, match="^steps"):
        TrainConfig.from_dict({})
    with pytest.raises(ConfigError, match="^steps"):
        TrainConfig.from_dict({"steps": 3, "epochs": 1})
    with pytest.raises(ConfigError, match="^retain_sampling"):
        TrainConfig.from_dict({"steps": 3, "retain_sampling": "modulo"})
    with pytest.raises(ConfigError, match="^lora.rank"):
        TrainConfig.from_dict({"steps": 3, "lora": {"rank": 4}})
    with pytest.raises(ConfigError, match="^batch_size"):
        TrainConfig.from_dict({"steps": 3, "batch_size": 0})
