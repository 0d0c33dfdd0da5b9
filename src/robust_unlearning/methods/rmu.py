"""RMU (Li et al. 2024; docs/methods.md, "RMU"): steer forget activations at block ℓ towards c·u, keep retain activations.

L = MSE(h_ℓ^θ(x_f), c·u) + α·MSE(h_ℓ^θ(x_r), h_ℓ^ref(x_r)); h_ℓ = output of decoder block ℓ (0-based module
``layers[ℓ]``, = HF ``hidden_states[ℓ+1]`` except after the final norm), read with a forward hook that stops the
forward right after block ℓ (no lm_head, no later blocks). u = r/‖r‖, r ~ U[0,1)^d from ``torch.rand`` with a
generator seeded by the run seed. c = ``steering_coeff`` or κ·mean‖h_ℓ‖ over forget content tokens at θ₀.
Only ``layers.{i}.mlp.down_proj.weight`` for i in ``layers`` (default ℓ−2..ℓ, clipped at 0) are trainable.
"""
from __future__ import annotations

import dataclasses

import torch

from ..utils.repro import derive_seed
from . import losses as L
from .base import LossMethod
from .gradients import with_term_means
from .registry import ConfigError, MethodConfig, num, register_method


class _Stop(Exception):
    pass


def hidden_at(model, mb, layer: int, counters=None, key: str = "policy_forward") -> torch.Tensor:
    """Output of decoder block ``layer`` for micro-batch ``mb``; the forward stops after that block."""
    from .loop import decoder_layers

    cap = {}

    def hook(_mod, _inp, out):
        cap["h"] = out[0] if isinstance(out, (tuple, list)) else out
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        if counters is not None:
            counters.add(key)
        model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in cap:
        raise RuntimeError(f"RMU: decoder block {layer} did not run")
    return cap["h"]


@register_method("rmu")
class RMU(LossMethod):
    # hidden_at stops the forward inside a decoder block, which FSDP's per-block gather/free does not survive
    supports_fsdp = False
    supports_lora = False

    @dataclasses.dataclass
    class Config(MethodConfig):
        lr: float = num(1e-3, gt=0)
        layer: int = num(0, ge=0)                     # ℓ (0-based decoder block)
        layers: list[int] | None = None               # trainable blocks; None = ℓ−2..ℓ clipped at 0
        param_name: str = "mlp.down_proj.weight"
        steering_coeff: float | None = num(None, gt=0)
        kappa: float = num(4.0, gt=0)                 # c = κ·mean‖h_ℓ‖ when steering_coeff is null
        alpha: float = num(100.0, ge=0)
        mask_pads: bool = True                        # false = reference (MSE over pads too)

        def check(self) -> None:
            if self.steering_coeff is not None:
                self.unused("kappa", "when steering_coeff is set")
            if self.layers is not None and (not self.layers or any(i < 0 for i in self.layers)):
                raise ConfigError("layers", "must be a non-empty list of block indices >= 0")

    lambda_r_key = "alpha"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.control = None
        self.ref = None
        self.c = None
        self.trainable_names: list[str] = []

    @property
    def uses_retain(self) -> bool:
        return self.cfg.alpha > 0

    @property
    def lambda_f(self) -> float:
        return 1.0

    def _train_layers(self) -> list[int]:
        if self.cfg.layers is not None:
            return sorted(set(self.cfg.layers))
        return list(range(max(0, self.cfg.layer - 2), self.cfg.layer + 1))

    def prepare(self, setup) -> None:
        from .loop import decoder_layers

        model = setup.model
        n = len(decoder_layers(model))
        for i in [self.cfg.layer] + self._train_layers():
            if i >= n:
                raise ConfigError("layer" if i == self.cfg.layer else "layers",
                                  f"block {i} out of range for a {n}-layer model")
        d = int(model.config.hidden_size)
        g = torch.Generator().manual_seed(derive_seed(setup.seed, "rmu_control"))
        u = torch.rand(d, generator=g)
        u = u / u.norm()
        if self.cfg.steering_coeff is not None:
            c = float(self.cfg.steering_coeff)
            self.mean_norm = None
        else:
            tot, cnt = 0.0, 0
            was = model.training
            model.eval()
            with torch.no_grad():
                for mb in setup.microbatches(setup.forget, "forget"):
                    h = hidden_at(model, mb, self.cfg.layer, setup.counters, "setup_forward").float()
                    m = mb.attention_mask.bool()
                    tot += float(h.norm(dim=-1)[m].sum())
                    cnt += int(m.sum())
            model.train(was)
            self.mean_norm = tot / max(cnt, 1)
            c = self.cfg.kappa * self.mean_norm
        self.c = c
        self.control = (c * u).to(setup.device)
        if self.uses_retain:
            self.ref = setup.reference_model()

    def select_trainable(self, model) -> None:
        layers = set(self._train_layers())
        self.trainable_names = []
        prefix = None
        from .loop import decoder_layers
        target = decoder_layers(model)
        for name, mod in model.named_modules():
            if mod is target:
                prefix = name
        for name, p in model.named_parameters():
            want = any(name == f"{prefix}.{i}.{self.cfg.param_name}" for i in layers)
            p.requires_grad_(want)
            if want:
                self.trainable_names.append(name)
        if len(self.trainable_names) != len(layers):
            raise ConfigError("param_name", f"found {self.trainable_names} for blocks {sorted(layers)}")

    def _mask_denom(self, ctx, mbs, h_dim: int, positions: int):
        if self.cfg.mask_pads:
            return positions * h_dim
        return sum(m.input_ids.numel() for m in mbs) * h_dim

    def run(self, trainer):
        return with_term_means(trainer.train())   # run-level term metrics (0: no probe, SAM or GCD term)

    def forget_loss(self, ctx, mb):
        h = hidden_at(ctx.model, mb, self.cfg.layer, ctx.counters)
        mask = mb.attention_mask if self.cfg.mask_pads else None
        denom = self._mask_denom(ctx, ctx.forget_mbs, h.shape[-1], ctx.forget_positions)
        v = L.rmu_forget_loss(h, self.control, mask, denom)
        return v, {"loss_rmu_forget": v}

    def retain_loss(self, ctx, mb):
        h = hidden_at(ctx.model, mb, self.cfg.layer, ctx.counters)
        with torch.no_grad():
            h_ref = hidden_at(self.ref, mb, self.cfg.layer, ctx.counters, "ref_forward")
        mask = mb.attention_mask if self.cfg.mask_pads else None
        denom = self._mask_denom(ctx, ctx.retain_mbs, h.shape[-1], ctx.retain_positions)
        v = L.rmu_retain_loss(h, h_ref, mask, denom)
        return v, {"loss_rmu_retain": v}

    def info(self) -> dict:
        return {"steering_coeff": self.c, "mean_norm_h": getattr(self, "mean_norm", None),
                "trainable": self.trainable_names, "layer": self.cfg.layer}
