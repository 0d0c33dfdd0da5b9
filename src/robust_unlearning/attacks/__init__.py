"""Attacks on unlearned models (docs/evaluation.md, "Attacks"): one small class per attack behind a registry.

Model attacks (``relearn``, ``quantize``, ``weight_noise``) write a new model folder; input attacks (``prefill``,
``jailbreak_templates``, ``multi_turn``, ``gcg``, ``latent``, ``direction``) write an artefact in ``prepare`` and
apply it in ``evaluate``. Heavy dependencies (data, methods, metrics, judges) are imported inside the functions
that need them, so importing this package stays cheap.
"""
from .registry import ATTACKS, KINDS, AttackConfigError, get_attack, load_builtin_attacks, register_attack

load_builtin_attacks()

__all__ = ["ATTACKS", "KINDS", "AttackConfigError", "get_attack", "register_attack", "load_builtin_attacks"]
