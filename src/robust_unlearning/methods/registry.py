"""Method registry and validated config dataclasses.

Why an explicit registry: the released PRISM code chose its losses by substring tests on the algorithm name
(docs/methods.md, "Defects of the released code we do not copy", D2), so a typo silently trained a different
method. Here a method is looked up by its exact name, and its ``Config.from_dict`` rejects unknown keys and
hyperparameters the chosen variant does not use (docs/methods.md, "General pitfalls").
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable

from ..utils.registry import add_entry, find_entry

METHODS: dict[str, type] = {}


class ConfigError(ValueError):
    """Invalid configuration; ``key`` names the offending key and appears first in the message."""

    def __init__(self, key: str, msg: str):
        self.key = key
        super().__init__(f"{key}: {msg}")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register a method class under ``name`` (and set its ``name`` attribute)."""

    def deco(cls: type) -> type:
        add_entry(METHODS, name, cls, "method")
        cls.name = name
        return cls

    return deco


def get_method(name: str) -> type:
    return find_entry(METHODS, name, _ensure_loaded,
                      lambda known: ConfigError("method", f"unknown method {name!r}; expected one of {known}"))


def _ensure_loaded() -> None:
    """Import every method module once so that their ``@register_method`` decorators have run, then the
    plugins named in ``RU_PLUGINS`` (methods defined outside the package; see ``robust_unlearning.plugins``)."""
    import importlib

    from ..plugins import load_plugins

    for mod in _METHOD_MODULES:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:  # pragma: no cover - only while a module is being written
            if exc.name != f"{__package__}.{mod}":
                raise
    load_plugins()


_METHOD_MODULES = ("ga", "graddiff", "npo", "simnpo", "rmu", "sam_npo", "task_vector", "prism", "finetuning")


# ----------------------------------------------------------------------------------------------------------
# Config base
# ----------------------------------------------------------------------------------------------------------

def choice(default: Any, choices: tuple, **meta: Any) -> Any:
    """A dataclass field restricted to ``choices``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices), **meta})


def num(default: Any, *, gt: float | None = None, ge: float | None = None, le: float | None = None,
        lt: float | None = None) -> Any:
    """A numeric dataclass field with a range check."""
    return dataclasses.field(default=default, metadata={"gt": gt, "ge": ge, "le": le, "lt": lt})


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@dataclasses.dataclass
class ConfigBase:
    """Dataclass config with strict ``from_dict``: unknown keys, wrong types and out-of-range values raise
    :class:`ConfigError` naming the key. Subclasses add cross-field rules in ``check()``."""

    @classmethod
    def from_dict(cls, d: dict | None) -> "ConfigBase":
        d = dict(d or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in fields:
                raise ConfigError(key, f"unknown key for {cls.__qualname__}; allowed: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            tp = hints.get(key, Any)
            if not _type_ok(value, tp):
                raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")
            if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
                raise ConfigError(key, f"must be finite, got {value!r}")
        obj = cls(**d)
        # ints given for float fields become floats (stable param folder names and JSON)
        for key, value in d.items():
            if hints.get(key) is float and isinstance(value, int):
                setattr(obj, key, float(value))
        object.__setattr__(obj, "_given_keys", frozenset(d))
        obj.validate()
        return obj

    def given(self, key: str) -> bool:
        """Whether ``key`` was set explicitly in the dict (for "unused hyperparameter" errors)."""
        return key in getattr(self, "_given_keys", frozenset())

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None:
                continue
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(f.name, f"must be one of {list(meta['choices'])}, got {value!r}")
            for op, test, word in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                                   ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")):
                bound = meta.get(op)
                if bound is not None and isinstance(value, (int, float)) and not test(value, bound):
                    raise ConfigError(f.name, f"must be {word} {bound}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise ConfigError(key, ...)."""

    def unused(self, key: str, why: str) -> None:
        """Raise if ``key`` was given although the chosen variant does not use it."""
        if self.given(key):
            raise ConfigError(key, f"not used {why}; remove it")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


#: Loop settings a method may set for itself; given, they replace ``unlearning.train``'s for that method only
#: (docs/methods.md, "The shared training loop"). Why per method: the published recipes differ between methods of
#: one table (MUSE-Books: PRISM 1 epoch, the MUSE baselines 10; the reference RMU uses Adam ε 1e-6 and no
#: clipping while the Hugging Face Trainer runs behind the others clip at 1.0 with ε 1e-8).
LOOP_OVERRIDES = ("steps", "epochs", "grad_clip", "adam_eps")


@dataclasses.dataclass
class MethodConfig(ConfigBase):
    """Base of every built-in method's ``Config``: the :data:`LOOP_OVERRIDES` keys, unset by default.

    ``grad_clip: null`` or ``0`` turns clipping off for the method; ``steps`` / ``epochs`` replace the loop's
    length (at most one of them); ``adam_eps`` replaces AdamW's ε. ``to_dict`` lists an override only when it was
    given, so a method's recorded hyperparameters stay its own and the effective loop settings are recorded with
    the loop's (run.json ``train``)."""
    steps: int | None = num(None, gt=0)
    epochs: int | None = num(None, gt=0)
    grad_clip: float | None = num(None, ge=0)
    adam_eps: float | None = num(None, gt=0)

    def validate(self) -> None:
        super().validate()     # ranges and the subclass's check()
        for key, what in (("steps", "an integer > 0"), ("epochs", "an integer > 0"), ("adam_eps", "a number > 0")):
            if self.given(key) and getattr(self, key) is None:
                raise ConfigError(key, f"must be {what}; remove the key to keep unlearning.train's value")
        if self.given("steps") and self.given("epochs"):
            raise ConfigError("steps", "set at most one of steps / epochs for a method")

    def loop_overrides(self) -> dict:
        """The given override keys and their values (``grad_clip`` 0 → None: no clipping)."""
        out = {k: getattr(self, k) for k in LOOP_OVERRIDES if self.given(k)}
        if "grad_clip" in out and not out["grad_clip"]:
            out["grad_clip"] = None
        return out

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items() if k not in LOOP_OVERRIDES or self.given(k)}

