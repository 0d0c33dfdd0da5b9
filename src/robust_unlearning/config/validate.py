"""Load and validate the workflow config: JSON schema (with defaults) + per-method / per-attack dataclasses.

Every error names the offending key as a dotted path, e.g. ``unlearning.methods.npo.beta``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, validators

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigValidationError(ValueError):
    """The config is invalid; the message names the key."""


def _coerce_floats(obj: Any) -> Any:
    """YAML 1.1 reads '1e-4' as a string; treat such strings as the numbers they are."""
    if isinstance(obj, dict):
        return {k: _coerce_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_coerce_floats(v) for v in obj]
    if isinstance(obj, str) and _FLOAT_RE.match(obj):
        return float(obj)
    return obj


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(Draft7Validator)


def load_schema(path: str | Path | None = None) -> dict:
    with open(path or SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigValidationError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigValidationError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigValidationError(f"{path}: the top level must be a mapping")
    return data


def _key_path(err) -> str:
    parts = [str(p) for p in err.absolute_path]
    if err.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", err.message)
        return ".".join(parts + extra[:1]) or "<root>"
    if err.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        return ".".join(parts + missing[:1])
    return ".".join(parts) or "<root>"


def validate_config(config: dict, schema_path: str | Path | None = None, deep: bool = True) -> dict:
    """Return a validated copy of ``config`` with defaults filled in; raise ConfigValidationError naming the key.

    ``deep`` also checks every grid cell against its method / attack config dataclass and the evaluation config.
    """
    cfg = _coerce_floats(copy.deepcopy(config))
    validator = _DefaultingValidator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), e.message))
    if errors:
        err = errors[0]
        msg = err.message
        if err.validator == "additionalProperties":
            msg = "unknown key"
        raise ConfigValidationError(f"config key '{_key_path(err)}': {msg}")
    if deep:
        _validate_semantics(cfg)
    return cfg


def _code_fingerprint(schema_path: str | Path | None) -> str:
    """sha256 of what decides a deep validation's verdict: the schema, every module of this package, and the
    plugins in force (``RU_PLUGINS``: their names and, where they resolve to a file, its source)."""
    import importlib.util

    from ..plugins import plugin_names

    h = hashlib.sha256(Path(schema_path or SCHEMA_PATH).read_bytes())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    for name in plugin_names():
        h.update(b"\0plugin\0" + name.encode())
        try:
            origin = name if name.endswith(".py") else getattr(importlib.util.find_spec(name), "origin", None)
        except (ImportError, ValueError):   # not importable: the deep validation names it
            origin = None
        if origin and Path(origin).is_file():
            h.update(Path(origin).read_bytes())
    return h.hexdigest()


def validate_config_cached(config: dict, cache_dir: str | Path, schema_path: str | Path | None = None) -> dict:
    """:func:`validate_config`, whose deep part (it imports every method and attack, hence torch and transformers:
    ~10 s on 2 cores) runs once per config and code version. A config that passed leaves a marker in ``cache_dir``
    named by the hash of the config, the schema and this package's source; with the marker only the schema checks
    run (milliseconds). The workflow calls this at every Snakemake start: each dry run, rerun and cluster job
    (every SLURM job starts its own Snakemake) would otherwise pay the import again."""
    from ..utils.io import atomic_write_text

    key = hashlib.sha256((json.dumps(config, sort_keys=True, default=str) + _code_fingerprint(schema_path))
                         .encode()).hexdigest()
    marker = Path(cache_dir) / key
    if marker.is_file():
        return validate_config(config, schema_path, deep=False)
    cfg = validate_config(config, schema_path, deep=True)
    try:
        atomic_write_text(marker, "deep validation passed\n")
    except OSError:   # a read-only working directory: validate deeply every time
        pass
    return cfg


def _validate_semantics(cfg: dict) -> None:
    from .grid import attack_settings, selects, split_attack_with, unlearn_runs

    try:
        runs = unlearn_runs(cfg)
        settings = attack_settings(cfg)
    except ValueError as exc:
        where, _, msg = str(exc).partition(": ")
        raise ConfigValidationError(f"config key '{where}': {msg}") from exc

    model = cfg["model"]
    if model["source"] in ("hub", "local", "gguf") and not model.get("name_or_path"):
        raise ConfigValidationError(f"config key 'model.name_or_path': required when model.source is {model['source']!r}")
    if model["source"] == "gguf" and not model.get("gguf_file"):
        raise ConfigValidationError("config key 'model.gguf_file': required when model.source is 'gguf'")
    if model.get("finetune") is not None:
        if model["source"] == "train_tiny":
            raise ConfigValidationError("config key 'model.finetune': only for pretrained models (source hub, "
                                        "local or gguf); train_tiny is configured by model.train")
        if model["finetune"].get("enabled", True) and cfg["benchmark"]["name"] != "synthetic":
            raise ConfigValidationError("config key 'model.finetune': needs the synthetic world's training "
                                        "mixtures (benchmark.name: synthetic)")

    from ..methods.registry import get_method
    from ..methods.loop import TrainConfig
    from ..methods.probe import ProbeConfig

    from ..data.unlearning_sets import ExampleFormat

    # prompt_format / mask_pad_labels / static_pad_id against the sources they apply to
    _check(lambda: ExampleFormat.from_benchmark(cfg["benchmark"]), "benchmark")
    _check(lambda: ProbeConfig.from_dict(cfg.get("probe", {})), "probe")
    _check(lambda: TrainConfig.from_dict(cfg["unlearning"].get("train", {})), "unlearning.train")
    for run in runs:
        try:
            cls = get_method(run.method)
        except (KeyError, ValueError) as exc:
            raise ConfigValidationError(f"config key 'unlearning.methods.{run.method}': unknown method "
                                        f"({exc})") from exc
        _check(lambda: cls.Config.from_dict(dict(run.settings)), f"unlearning.methods.{run.method}")

    from ..attacks.registry import get_attack

    enabled = set(cfg["attacks"].get("enabled", []))
    for name in ("relearn", "prefill", "jailbreak_templates", "multi_turn", "gcg", "latent", "direction",
                 "quantize", "weight_noise"):
        if name in cfg["attacks"] and name not in enabled:
            raise ConfigValidationError(f"config key 'attacks.{name}': settings given for an attack that is not "
                                        "in attacks.enabled")
    for run in runs:
        where = f"config key 'unlearning.methods.{run.method}.attack_with'"
        for a in run.attack_with or ():
            try:
                name, wanted = split_attack_with(a)
            except ValueError as exc:
                raise ConfigValidationError(f"{where}: {exc}") from None
            if name not in enabled:
                raise ConfigValidationError(f"{where}: {name!r} is not in attacks.enabled")
            if wanted and not any(s.attack == name and selects(wanted, s.params) for s in settings):
                raise ConfigValidationError(f"{where}: {a!r} selects no setting of attacks.{name} (its settings: "
                                            f"{[s.params for s in settings if s.attack == name]})")
    for s in settings:
        cls = get_attack(s.attack)
        _check(lambda: cls.Config.from_dict(dict(s.settings)), f"attacks.{s.attack}")
    methods = set(cfg["unlearning"]["methods"])
    where_targets = [("attacks.targets", cfg["attacks"].get("targets", []))]
    where_targets += [(f"attacks.{n}.targets", (cfg["attacks"].get(n) or {}).get("targets") or [])
                      for n in enabled]
    for where, targets in where_targets:
        if not isinstance(targets, list):
            raise ConfigValidationError(f"config key '{where}': expected a list of targets")
        for t in targets:
            if t not in {"unlearned", "base", "retrain"} | methods:
                raise ConfigValidationError(f"config key '{where}': unknown target {t!r}; expected "
                                            "unlearned, base, retrain or a method name from unlearning.methods")

    from ..metrics.evaluate import EvalConfig

    evaluation = dict(cfg.get("evaluation", {}))
    under_attack = evaluation.pop("under_attack", None) or {}
    if not isinstance(under_attack, dict):
        raise ConfigValidationError("config key 'evaluation.under_attack': expected a mapping of evaluation keys")
    _check(lambda: EvalConfig.from_dict(evaluation), "evaluation")
    _check(lambda: EvalConfig.from_dict({**evaluation, **under_attack}), "evaluation.under_attack")


def _check(fn, where: str) -> None:
    try:
        fn()
    except (ValueError, TypeError, KeyError) as exc:
        if getattr(exc, "key", None):
            msg = str(exc).strip("'\"")
            msg = msg[len(f"{exc.key}: "):] if msg.startswith(f"{exc.key}: ") else msg
            raise ConfigValidationError(f"config key '{where}.{exc.key}': {msg}") from exc
        text = str(exc).strip("'\"")
        # dataclass errors start with the field name ("beta: must be > 0"): prefix the section path
        key, sep, msg = text.partition(": ")
        if sep and key and " " not in key:
            raise ConfigValidationError(f"config key '{where}.{key}': {msg}") from exc
        raise ConfigValidationError(f"config key '{where}': {text}") from exc
