"""Attack registry (docs/evaluation.md, "Attacks"): one small class per attack, looked up by name.

Every attack class carries ``name``, ``kind`` ∈ {"model", "input"}, a ``Config`` dataclass with
``from_dict`` (see ``attacks.config``) and ``prepare(model_dir, bench, params, out_dir, seed, device)``;
input attacks also have ``evaluate(model, tokenizer, bench, artefact_dir, eval_cfg, seed)``.
The registry stays free of heavy imports so the CLI can list attacks cheaply.
"""
from __future__ import annotations

import importlib
from typing import Callable

ATTACKS: dict[str, type] = {}

KINDS = ("model", "input")

# Modules that register the built-in attacks (imported on first lookup, not at package import).
_BUILTIN_MODULES = ("relearn", "prefill", "jailbreak_templates", "multi_turn", "gcg", "latent", "direction",
                    "quantize", "weight_noise")


class AttackConfigError(ValueError):
    """An attack's settings are invalid; ``key`` names the offending key (message starts with it)."""

    def __init__(self, key: str, msg: str, attack: str | None = None):
        self.key = key
        self.attack = attack
        where = f"attacks.{attack}.{key}" if attack else key
        super().__init__(f"{where}: {msg}")


def register_attack(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_attack("gcg")``. Refuses duplicate names and bad ``kind``s."""

    def deco(cls: type) -> type:
        kind = getattr(cls, "kind", None)
        if kind not in KINDS:
            raise TypeError(f"attack {name!r}: kind must be one of {KINDS}, got {kind!r}")
        if not hasattr(cls, "Config") or not hasattr(cls.Config, "from_dict"):
            raise TypeError(f"attack {name!r}: needs a Config dataclass with from_dict")
        if kind == "input" and not callable(getattr(cls, "evaluate", None)):
            raise TypeError(f"attack {name!r}: input attacks need evaluate()")
        if name in ATTACKS and ATTACKS[name] is not cls:
            raise ValueError(f"attack {name!r} registered twice ({ATTACKS[name].__module__} and {cls.__module__})")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return deco


def load_builtin_attacks() -> dict[str, type]:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    return ATTACKS


def get_attack(name: str) -> type:
    """The attack class for ``name``; an unknown name raises ``AttackConfigError`` naming ``attack``."""
    if name not in ATTACKS:
        load_builtin_attacks()
    if name not in ATTACKS:   # a plugin attack (RU_PLUGINS / ru --plugin; docs/architecture.md, extending)
        from ..plugins import load_plugins
        load_plugins()
    try:
        return ATTACKS[name]
    except KeyError:
        raise AttackConfigError("attack", f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}") from None
