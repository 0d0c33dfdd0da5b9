"""Validated attack settings: ``Config.from_dict(d)`` rejects unknown keys, wrong types and bad ranges.

Each attack's ``Config`` is a dataclass subclassing ``AttackConfig``; field annotations give the types
(``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional[...]``, ``list[...]``, unions) and
``check()`` adds the range checks. Errors are ``AttackConfigError`` whose message starts with the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from .registry import AttackConfigError

_NONE = type(None)


def _coerce(key: str, value: Any, tp: Any, attack: str | None) -> Any:
    """Return ``value`` converted to ``tp`` or raise AttackConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        for a in args:
            if a is _NONE:
                continue
            try:
                return _coerce(key, value, a, attack)
            except AttackConfigError as exc:
                errors.append(str(exc))
        raise AttackConfigError(key, f"{value!r} matches none of {[getattr(a, '__name__', str(a)) for a in args]}",
                                attack)
    if origin is Literal:
        if value not in get_args(tp):
            raise AttackConfigError(key, f"{value!r} is not one of {list(get_args(tp))}", attack)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise AttackConfigError(key, f"expected a list, got {type(value).__name__}", attack)
        (inner,) = get_args(tp)[:1] or (Any,)
        return [_coerce(key, v, inner, attack) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise AttackConfigError(key, f"expected true/false, got {value!r}", attack)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise AttackConfigError(key, f"expected an integer, got {value!r}", attack)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise AttackConfigError(key, f"expected a number, got {value!r}", attack)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise AttackConfigError(key, f"expected a number, got {value!r}", attack)
    if tp is str:
        if not isinstance(value, str):
            raise AttackConfigError(key, f"expected a string, got {value!r}", attack)
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise AttackConfigError(key, f"expected a mapping, got {type(value).__name__}", attack)
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


@dataclasses.dataclass
class AttackConfig:
    """Base of every attack's ``Config``."""

    attack_name: ClassVar[str | None] = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "AttackConfig":
        d = dict(d or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in fields:
                raise AttackConfigError(key, f"unknown key; expected one of {sorted(fields)}", cls.attack_name)
        kwargs = {k: _coerce(k, v, hints[k], cls.attack_name) for k, v in d.items()}
        cfg = cls(**kwargs)
        cfg.check()
        return cfg

    def check(self) -> None:  # overridden for range checks
        return None

    def fail(self, key: str, msg: str) -> None:
        raise AttackConfigError(key, msg, self.attack_name)

    def require(self, cond: bool, key: str, msg: str) -> None:
        if not cond:
            self.fail(key, msg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SamplingConfig(AttackConfig):
    """Settings shared by the attacks that sample a reply per prompt (prefill, multi-turn, templates)."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 8
    refusal_variant: Literal["substring", "word_boundary"] = "substring"

    def check(self) -> None:
        self.require(self.temperature >= 0, "temperature", f"must be ≥ 0, got {self.temperature}")
        self.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        for key in ("max_new_tokens", "batch_size"):
            self.require(getattr(self, key) >= 1, key, f"must be ≥ 1, got {getattr(self, key)}")

    def require_min(self, minimum: int, *keys: str) -> None:
        """Each key ≥ minimum (None allowed: "all" / "unset")."""
        for key in keys:
            v = getattr(self, key)
            self.require(v is None or v >= minimum, key, f"must be ≥ {minimum} or null, got {v}")
