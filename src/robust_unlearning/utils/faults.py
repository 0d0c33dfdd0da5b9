"""Fault injection for the reliability tests: one environment variable, inert unless set.

``RU_FAULT_INJECT`` holds comma-separated specs ``<subcommand>[@<text>]``; a ``ru <subcommand>`` whose ``--out``
path contains ``<text>`` (any ``--out`` when ``@<text>`` is omitted) raises :class:`InjectedFault` before it does
any work, as a crashing job would. Examples::

    RU_FAULT_INJECT=evaluate@unlearn/npo/        every evaluation of the npo models fails
    RU_FAULT_INJECT=unlearn@graddiff,aggregate   the graddiff unlearning jobs and the aggregate fail

Why an environment variable: Snakemake passes the environment to every job unchanged, so a test can make exactly
one job of a real run fail without editing rules or config. Nothing else reads it; unset, this module does nothing.
"""
from __future__ import annotations

import os

ENV = "RU_FAULT_INJECT"


class InjectedFault(RuntimeError):
    """The failure asked for by ``RU_FAULT_INJECT`` (tests only)."""


def specs(value: str | None = None) -> list[tuple[str, str]]:
    """``[(subcommand, text), ...]`` of ``value`` (default: the environment variable)."""
    value = os.environ.get(ENV, "") if value is None else value
    out = []
    for spec in value.split(","):
        spec = spec.strip()
        if spec:
            command, _, text = spec.partition("@")
            out.append((command.strip(), text.strip()))
    return out


def maybe_fail(command: str, out: str | os.PathLike | None) -> None:
    """Raise :class:`InjectedFault` when a spec matches ``command`` and ``out``."""
    for cmd, text in specs():
        if cmd == command and (not text or text in str(out or "")):
            raise InjectedFault(f"injected fault ({ENV}={os.environ.get(ENV)!r}) in `ru {command}` writing {out}")
