"""The two operations every name registry of the library shares (methods, attacks, metrics): add an entry once,
and look a name up after the built-in entries have been imported, with an error listing the known names."""
from __future__ import annotations

from typing import Any, Callable


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def add_entry(table: dict[str, Any], name: str, obj: Any, what: str) -> None:
    """``table[name] = obj``; a different object already under ``name`` is a ``ValueError`` naming both (two
    plugins, or a plugin and a built-in, that chose the same name)."""
    old = table.get(name)
    if old is not None and old is not obj:
        raise ValueError(f"{what} {name!r} registered twice ({_origin(old)} and {_origin(obj)})")
    table[name] = obj


def find_entry(table: dict[str, Any], name: str, load: Callable[[], None],
               unknown: Callable[[list[str]], Exception]) -> Any:
    """``table[name]`` after ``load()`` (which imports the modules that register the built-ins); an unknown name
    raises ``unknown(sorted known names)``."""
    load()
    try:
        return table[name]
    except KeyError:
        raise unknown(sorted(table)) from None
