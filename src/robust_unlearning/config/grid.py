"""Expand the config grid into jobs and name their output folders.

A LIST value in a method's (or attack's) settings is a grid axis: one job per value, and the value appears
in the output path as ``key~value``. A scalar is a fixed setting: recorded in run.json, not in the path.
Keys in a path are sorted, so the same combination always gets the same folder.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

NO_PARAMS = "default"


def format_value(v: Any) -> str:
    """Short, stable text for a parameter value: 1e-4 -> '1e-4', 0.1 -> '0.1', True -> 'true'."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0 or math.isfinite(v) and 1e-2 <= abs(v) < 1e5:
            text = f"{v:.10g}"
        else:
            mant, exp = f"{v:.6e}".split("e")
            mant = mant.rstrip("0").rstrip(".")
            text = f"{mant}e{int(exp)}"
        return text
    if v is None:
        return "none"
    text = str(v)
    if any(c in text for c in "/~ \t\n") or not text:
        raise ValueError(f"parameter value {v!r} cannot be used in an output path (no '/', '~' or spaces)")
    return text.replace("_", "-")  # '_' separates pairs; per_tensor -> per-tensor


def param_string(params: dict[str, Any]) -> str:
    if not params:
        return NO_PARAMS
    return "_".join(f"{k.replace('_', '-')}~{format_value(params[k])}" for k in sorted(params))


def parse_param_string(text: str) -> dict[str, str]:
    """Inverse of :func:`param_string` (values stay strings; '_' inside values comes back as '-')."""
    if text in (NO_PARAMS, "-", ""):
        return {}
    out = {}
    for part in text.split("_"):
        key, _, value = part.partition("~")
        out[key.replace("-", "_")] = value
    return out


def _grids(spec: dict | list) -> list[dict]:
    return list(spec) if isinstance(spec, list) else [spec]


def expand(spec: dict | list, where: str) -> list[tuple[dict, dict]]:
    """Return (axes, fixed) pairs for every combination of every grid in ``spec``; rejects duplicates."""
    out, seen = [], set()
    for grid in _grids(spec):
        axes = {k: v for k, v in grid.items() if isinstance(v, list)}
        fixed = {k: v for k, v in grid.items() if not isinstance(v, list)}
        for k, values in axes.items():
            if not values:
                raise ValueError(f"{where}.{k}: empty list of grid values")
            if len({repr(x) for x in values}) != len(values):
                raise ValueError(f"{where}.{k}: duplicate grid values {values}")
        keys = sorted(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            chosen = dict(zip(keys, combo))
            ident = param_string(chosen) + "|" + repr(sorted(fixed.items()))
            if ident in seen:
                raise ValueError(f"{where}: the grid contains the combination {param_string(chosen)} twice")
            seen.add(ident)
            out.append((chosen, fixed))
    names = [param_string(a) for a, _ in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"{where}: grids differ only in fixed settings, so their output folders collide: "
                         f"{sorted(dupes)}; make the differing setting a list (a grid axis)")
    return out


ATTACK_WITH = "attack_with"  # reserved key of a method grid: which attacks its runs face (default: all)


def split_attack_with(entry: str) -> tuple[str, dict[str, str]]:
    """``"relearn"`` → ``("relearn", {})`` (every setting); ``"relearn:steps=20,fraction=1.0"`` → the attack and
    the axis values a setting must have to be faced (docs/architecture.md, "The grid")."""
    name, _, sel = str(entry).partition(":")
    wanted = {}
    for item in filter(None, (x.strip() for x in sel.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"{entry!r}: expected attack or attack:key=value[,key=value...]")
        wanted[key.strip()] = value.strip()
    return name.strip(), wanted


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a.replace("_", "-") == b.replace("_", "-")


def selects(wanted: dict[str, str], attack_params: str) -> bool:
    """Whether an attack setting (its folder name) has every axis value of ``wanted`` (numbers compared as numbers)."""
    have = parse_param_string(attack_params)
    return all(k in have and _same(have[k], v) for k, v in wanted.items())


@dataclass(frozen=True)
class UnlearnRun:
    method: str
    params: str                     # folder name (axes only)
    seed: int
    settings: dict = field(hash=False, compare=False, default_factory=dict)  # axes + fixed
    attack_with: tuple | None = None  # None = every enabled attack; entries "attack" or "attack:key=value,..."

    def faces(self, attack: str, attack_params: str | None = None) -> bool:
        """Whether this run faces ``attack`` (at the setting ``attack_params``, when given)."""
        if self.attack_with is None:
            return True
        for entry in self.attack_with:
            name, wanted = split_attack_with(entry)
            if name == attack and (attack_params is None or selects(wanted, attack_params)):
                return True
        return False

    @property
    def model_id(self) -> str:
        return f"unlearn/{self.method}/{self.params}/seed~{self.seed}"


@dataclass(frozen=True)
class AttackSetting:
    attack: str
    params: str
    settings: dict = field(hash=False, compare=False, default_factory=dict)
    targets: tuple = ()             # models this attack runs against (attacks.<a>.targets or attacks.targets)


def unlearn_runs(config: dict) -> list[UnlearnRun]:
    runs = []
    for method, spec in config["unlearning"]["methods"].items():
        for i, grid in enumerate(_grids(spec)):
            grid = dict(grid)
            attack_with = grid.pop(ATTACK_WITH, None)
            where = f"unlearning.methods.{method}" + (f"[{i}]" if isinstance(spec, list) else "")
            for axes, fixed in expand(grid, where):
                for seed in config["unlearning"]["seeds"]:
                    runs.append(UnlearnRun(method, param_string(axes), int(seed), {**fixed, **axes},
                                           tuple(attack_with) if attack_with is not None else None))
    ids = [r.model_id for r in runs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"unlearning.methods: two grids produce the same runs {dupes}; make the differing "
                         "setting a list (a grid axis)")
    return runs


def attack_settings(config: dict) -> list[AttackSetting]:
    out = []
    default_targets = tuple(config["attacks"].get("targets", ("unlearned", "base")))
    for name in config["attacks"].get("enabled", []):
        spec = dict(config["attacks"].get(name, {}) or {})
        targets = spec.pop("targets", None)  # per-attack override of attacks.targets (not a grid axis)
        targets = tuple(targets) if targets is not None else default_targets
        for axes, fixed in expand(spec, f"attacks.{name}"):
            out.append(AttackSetting(name, param_string(axes), {**fixed, **axes}, targets))
    return out


def iter_model_ids(config: dict) -> Iterable[str]:
    if has_pretrained(config):
        yield "models/pretrained"
    yield "models/base"
    if has_retrain(config):
        yield "models/retrain"
    for run in unlearn_runs(config):
        yield run.model_id


def has_retrain(config: dict) -> bool:
    """Only the synthetic benchmark has a true retrain oracle (real benchmarks use published constants); a
    pretrained model gets one only when it is fine-tuned into the target (``model.finetune``)."""
    if config["benchmark"]["name"] != "synthetic":
        return False
    return config.get("model", {}).get("source", "train_tiny") == "train_tiny" or has_pretrained(config)


def has_pretrained(config: dict) -> bool:
    """A pretrained model fine-tuned into the target (``model.finetune``) is kept and evaluated as
    ``models/pretrained`` next to the target (``models/base``) and the oracle (``models/retrain``)."""
    model = config.get("model", {})
    ft = model.get("finetune")
    return model.get("source") in ("hub", "local", "gguf") and bool(ft) and bool(ft.get("enabled", True))
