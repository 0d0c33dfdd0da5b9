"""Fault injection for the reliability tests: one environment variable, inert unless set.

``RU_FAULT_INJECT`` holds comma-separated specs ``<subcommand>[@<text>][#<point>]``; they apply to a
``ru <subcommand>`` whose ``--out`` path contains ``<text>`` (any ``--out`` when ``@<text>`` is omitted).

- without ``#<point>`` the job raises :class:`InjectedFault` before it does any work, as a job that crashes on
  start would;
- with ``#<point>`` it raises in the MIDDLE of its work, where the library calls :func:`at` with that point, so
  that Snakemake meets a job that has already written part of what it writes (checkpoints, logs, temp files).
  Points the library marks: ``step=<n>`` after optimizer step n of the training loop (methods/loop.py; before
  that step's periodic checkpoint), ``metric=<name>`` after the metric <name> of an evaluation
  (metrics/evaluate.py; e.g. ``metric=knowmem``).

Examples::

    RU_FAULT_INJECT=evaluate@unlearn/npo/        every evaluation of the npo models fails on start
    RU_FAULT_INJECT=unlearn@graddiff,aggregate   the graddiff unlearning jobs and the aggregate fail on start
    RU_FAULT_INJECT=unlearn@unlearn/ga/#step=3   the ga unlearning job crashes after its 3rd optimizer step
    RU_FAULT_INJECT=evaluate@/none/#metric=mcq_cloze   clean evaluations crash after their first metric

Why an environment variable: Snakemake passes the environment to every job unchanged, so a test can make exactly
one job of a real run fail without editing rules or config. Nothing else reads it; unset, this module does nothing.
"""
from __future__ import annotations

import os

ENV = "RU_FAULT_INJECT"

#: (subcommand, --out) of the running ``ru`` command, recorded by :func:`maybe_fail` for :func:`at`
_active: tuple[str, str] | None = None


class InjectedFault(RuntimeError):
    """The failure asked for by ``RU_FAULT_INJECT`` (tests only)."""


def specs(value: str | None = None) -> list[tuple[str, str, str]]:
    """``[(subcommand, text, point), ...]`` of ``value`` (default: the environment variable)."""
    value = os.environ.get(ENV, "") if value is None else value
    out = []
    for spec in value.split(","):
        spec = spec.strip()
        if spec:
            head, _, point = spec.partition("#")
            command, _, text = head.partition("@")
            out.append((command.strip(), text.strip(), point.strip()))
    return out


def _matching(command: str, out, point: str) -> bool:
    return any(cmd == command and (not text or text in str(out or "")) and pt == point
               for cmd, text, pt in specs())


def maybe_fail(command: str, out: str | os.PathLike | None) -> None:
    """Called once by the CLI before ``ru <command>`` starts: raise :class:`InjectedFault` when a spec without
    a point matches ``command`` and ``out``; remember both for the mid-run points of :func:`at`."""
    global _active
    _active = (command, str(out or ""))
    if _matching(command, out, ""):
        raise InjectedFault(f"injected fault ({ENV}={os.environ.get(ENV)!r}) in `ru {command}` writing {out}")


def at(point: str) -> None:
    """A named point in the middle of a job's work: raise :class:`InjectedFault` when a spec ``...#<point>``
    matches the running command (one dictionary lookup when the variable is unset)."""
    if _active is None or not os.environ.get(ENV):
        return
    command, out = _active
    if _matching(command, out, point):
        raise InjectedFault(f"injected fault ({ENV}={os.environ.get(ENV)!r}) in `ru {command}` writing {out} "
                            f"at {point}")
