"""Plugins: modules outside the package that register methods or attacks (docs/architecture.md, "Extending").

A plugin is an ordinary Python module whose import runs ``@register_method("name")`` or
``@register_attack("name")``. It is named either as a dotted module name importable from ``sys.path``
(``my_lab.methods``) or as the path of a ``.py`` file (``plugins/my_method.py``), and reaches the registries by

- ``ru --plugin MODULE ...`` (repeatable), or
- the environment variable ``RU_PLUGINS=MODULE[,MODULE...]``, which every ``ru`` process and the method registry
  read, so a Snakemake run started with it in the environment passes it to each job unchanged.

Each plugin is imported once per process; a plugin that cannot be imported is an error naming it and where it was
named (never skipped: a grid that names its method would otherwise fail later with "unknown method").
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

ENV = "RU_PLUGINS"

_LOADED: dict[str, ModuleType] = {}


class PluginError(ImportError):
    """A plugin named on the command line or in RU_PLUGINS cannot be imported."""


def plugin_names(given: Iterable[str] = ()) -> list[str]:
    """``given`` followed by the entries of ``RU_PLUGINS``, without repeats, in order."""
    names = [*given, *os.environ.get(ENV, "").split(",")]
    out: list[str] = []
    for n in (n.strip() for n in names):
        if n and n not in out:
            out.append(n)
    return out


def load_plugins(given: Iterable[str] = ()) -> list[ModuleType]:
    """Import every plugin of :func:`plugin_names` not imported yet; returns the modules."""
    return [_import(name) for name in plugin_names(given)]


def _import(name: str) -> ModuleType:
    if name in _LOADED:
        return _LOADED[name]
    where = f"plugin {name!r} (from --plugin or {ENV})"
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise PluginError(f"{where}: file not found: {path}")
        mod_name = f"ru_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module      # dataclasses and pickling look the module up by name
        # registered before it runs: its own imports of the package reach load_plugins() again (the method
        # registry loads plugins on first use), which must not execute the file a second time
        _LOADED[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name], _LOADED[name]
            raise
    else:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                raise PluginError(f"{where}: no module named {exc.name!r} on sys.path") from exc
            raise
    _LOADED[name] = module
    return module
