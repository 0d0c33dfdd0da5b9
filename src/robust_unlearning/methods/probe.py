"""PRISM Stage 1: the adversarially trained probe (docs/methods.md, "Stage 1: the robust probe").

Features z(x) = π(h_L^{θ₀}(x)) from the frozen model (no grad, upcast to fp32) at every candidate layer, extracted
in one forward pass per batch. For each layer a fresh probe (MLP d→64→ReLU→32→ReLU→2, or ``linear`` d→2) is trained
with Adam on L = CE(z) + α·CE(z + ε·sign(∇_z CE)) + λ₁·Σ|w| (FGSM, ℓ∞); the layer with the best validation accuracy
is kept (ties → the smaller layer). Labels: forget = 1, retain = 0. Data = the run's own training examples, hashed
into the artefact (D9); the 80/20 split is seeded (D17). The pooling is recorded and reused by Stage 2 (D3).

Artefact: ``probe.pt`` (state dict only, ``torch.load(weights_only=True)``) + ``probe.json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..utils.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from ..utils.repro import derive_seed
from .losses import pool_hidden, pool_mask
from .registry import ConfigBase, ConfigError, choice, num

PROBE_FILE, META_FILE = "probe.pt", "probe.json"


class Probe(torch.nn.Module):
    def __init__(self, in_dim: int, arch: str = "mlp", hidden: Sequence[int] = (64, 32)):
        super().__init__()
        layers: list[torch.nn.Module] = []
        d = in_dim
        if arch == "mlp":
            for h in hidden:
                layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
                d = h
        elif arch != "linear":
            raise ValueError(f"probe arch must be mlp or linear, got {arch!r}")
        layers.append(torch.nn.Linear(d, 2))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclasses.dataclass
class ProbeConfig(ConfigBase):
    layers: list[int] | None = None            # candidate hidden_states indices; None = 1..N (synthetic default)
    pooling: str = choice("mean", ("mean", "last"))
    arch: str = choice("mlp", ("mlp", "linear"))
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64, 32])
    lr: float = num(1e-4, gt=0)
    epochs: int = num(10, gt=0)
    batch_size: int = num(16, gt=0)
    eps: float = num(0.01, ge=0)               # FGSM ε in absolute feature units
    adv_alpha: float = num(0.4, ge=0)
    l1: float = num(1e-4, ge=0)
    val_frac: float = num(0.2, gt=0, lt=1)
    feature_batch_size: int = num(8, gt=0)
    max_len: int | None = num(None, gt=1)

    def check(self) -> None:
        if self.layers is not None and (not self.layers or any(l < 0 for l in self.layers)):
            raise ConfigError("layers", "must be a non-empty list of hidden_states indices >= 0")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError("hidden", "sizes must be > 0")


@torch.no_grad()
def extract_features(model, tokenizer, examples: Sequence[dict], layers: Sequence[int], pooling: str,
                     batch_size: int = 8) -> dict[int, torch.Tensor]:
    """{L: [N, d] fp32} pooled ``hidden_states[L]`` of the frozen model (one forward per batch for all layers)."""
    from ..data.collate import pad_batch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for i in range(0, len(examples), batch_size):
        b = pad_batch(examples[i:i + batch_size], pad)
        ids, att, lab = b["input_ids"].to(dev), b["attention_mask"].to(dev), b["labels"].to(dev)
        hs = model(input_ids=ids, attention_mask=att, use_cache=False, output_hidden_states=True).hidden_states
        m = pool_mask(lab, att)
        for l in layers:
            feats[l].append(pool_hidden(hs[l], m, pooling).float().cpu())
    model.train(was_training)
    return {l: torch.cat(v) for l, v in feats.items()}


def _train_one(z_tr, y_tr, z_va, y_va, cfg: ProbeConfig, seed: int) -> tuple[Probe, float, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = Probe(z_tr.shape[1], cfg.arch, cfg.hidden)
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    n = z_tr.shape[0]
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for j in range(0, n, cfg.batch_size):
            idx = perm[j:j + cfg.batch_size]
            z = z_tr[idx].clone().requires_grad_(True)
            y = y_tr[idx]
            clean = F.cross_entropy(probe(z), y)
            (gz,) = torch.autograd.grad(clean, z, retain_graph=True)
            z_adv = (z + cfg.eps * gz.sign()).detach()
            loss = clean + cfg.adv_alpha * F.cross_entropy(probe(z_adv), y)
            if cfg.l1:
                loss = loss + cfg.l1 * sum(p.abs().sum() for p in probe.parameters())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    probe.eval()
    with torch.no_grad():
        tr_acc = float((probe(z_tr).argmax(-1) == y_tr).float().mean())
        va_acc = float((probe(z_va).argmax(-1) == y_va).float().mean()) if len(y_va) else float("nan")
    return probe, tr_acc, va_acc


def train_probe(model, tokenizer, forget: Sequence[dict], retain: Sequence[dict], cfg: dict | None, seed: int,
                out_dir) -> dict[str, Any]:
    """Train and select the Stage-1 probe; write ``probe.pt`` + ``probe.json`` into ``out_dir``; return the meta."""
    from .loop import _truncate, examples_sha256

    pc = ProbeConfig.from_dict(cfg or {})
    forget, retain = _truncate(forget, pc.max_len), _truncate(retain, pc.max_len)
    if not forget or not retain:
        raise ValueError("train_probe: forget and retain examples are both required")
    n_layers = int(model.config.num_hidden_layers)
    layers = sorted(set(pc.layers)) if pc.layers is not None else list(range(1, n_layers + 1))
    if max(layers) > n_layers:
        raise ConfigError("layers", f"index {max(layers)} > number of layers {n_layers} (hidden_states has N+1 entries)")
    examples = list(forget) + list(retain)
    y = torch.tensor([1] * len(forget) + [0] * len(retain))
    feats = extract_features(model, tokenizer, examples, layers, pc.pooling, pc.feature_batch_size)
    g = torch.Generator().manual_seed(derive_seed(seed, "probe_split"))
    perm = torch.randperm(len(examples), generator=g)
    n_val = max(1, int(round(pc.val_frac * len(examples))))
    if n_val >= len(examples):
        raise ValueError("train_probe: too few examples for a train/val split")
    va, tr = perm[:n_val], perm[n_val:]
    results, best = {}, None
    for l in layers:
        z = feats[l]
        probe, tr_acc, va_acc = _train_one(z[tr], y[tr], z[va], y[va], pc, derive_seed(seed, "probe", l))
        results[l] = {"val_acc": va_acc, "train_acc": tr_acc, "feature_std": float(z.std()),
                      "feature_mean_norm": float(z.norm(dim=-1).mean())}
        if best is None or va_acc > best[1]:  # strict: ties keep the smaller layer
            best = (l, va_acc, probe)
    layer, val_acc, probe = best
    meta = {"layer": layer, "pooling": pc.pooling, "in_dim": int(feats[layer].shape[1]), "arch": pc.arch,
            "hidden": list(pc.hidden), "eps": pc.eps, "adv_alpha": pc.adv_alpha, "l1": pc.l1, "lr": pc.lr,
            "epochs": pc.epochs, "batch_size": pc.batch_size, "val_frac": pc.val_frac, "seed": int(seed),
            "val_acc": val_acc, "candidates": {str(l): r for l, r in results.items()},
            "val_acc_per_layer": {str(l): r["val_acc"] for l, r in results.items()},
            "feature_std_per_layer": {str(l): r["feature_std"] for l, r in results.items()},
            "n_layers": n_layers, "n_train": int(len(tr)), "n_val": int(n_val),
            "data": {"n_forget": len(forget), "n_retain": len(retain), "forget_sha256": examples_sha256(forget),
                     "retain_sha256": examples_sha256(retain)},
            "labels": {"forget": 1, "retain": 0}, "config": pc.to_dict()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in probe.state_dict().items()}, buf)
    blob = buf.getvalue()
    atomic_write_bytes(out / PROBE_FILE, blob)
    meta["probe_file"] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}  # checked on load
    atomic_write_json(out / META_FILE, _finite(meta))
    return meta


def load_probe(probe_dir) -> tuple[Probe, dict]:
    """(frozen fp32 probe in eval mode, meta) from a ``train_probe`` folder."""
    d = Path(probe_dir)
    if not (d / PROBE_FILE).is_file() or not (d / META_FILE).is_file():
        raise FileNotFoundError(f"{d}: no {PROBE_FILE} / {META_FILE} (train the probe first)")
    meta = read_json(d / META_FILE)
    rec = meta.get("probe_file")
    if isinstance(rec, dict):  # size / sha256 recorded at write time: never load a truncated or altered file
        f = d / PROBE_FILE
        if f.stat().st_size != rec.get("size") or sha256_file(f) != rec.get("sha256"):
            raise ValueError(f"{f}: size/sha256 do not match {META_FILE} (truncated or corrupted); retrain the probe")
    probe = Probe(int(meta["in_dim"]), meta.get("arch", "mlp"), meta.get("hidden", [64, 32]))
    probe.load_state_dict(torch.load(d / PROBE_FILE, map_location="cpu", weights_only=True))
    probe.eval().requires_grad_(False)
    return probe, meta


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
