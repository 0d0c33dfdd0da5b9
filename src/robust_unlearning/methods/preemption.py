"""Stopping a run cleanly on SIGTERM/SIGINT (SLURM preemption, Ctrl-C).

The first signal only sets a flag; the loop finishes the current optimizer step, checkpoints, and raises
:class:`Preempted` (exit code 128 + signal, 143 for SIGTERM). A second signal stops at once without a checkpoint.
"""
from __future__ import annotations

import signal
import threading
import time


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; exits with 128 + signal number (143 for SIGTERM)."""

    def __init__(self, signum: int = signal.SIGTERM, step: int | None = None, checkpoint_dir=None):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        super().__init__(128 + int(signum))

    def __str__(self) -> str:
        return f"preempted by signal {self.signum} after step {self.step}; state saved in {self.checkpoint_dir}"


#: with several processes, a second signal this soon after the first is the launcher passing the first one on
RELAY_WINDOW_S = 10.0


class SignalGuard:
    """While active (main thread only), SIGTERM/SIGINT set ``trainer._stop_signal``; restores old handlers.

    ``relayed`` (a process of a multi-process run): the launcher (torch's elastic agent under ``accelerate
    launch``) passes a SIGTERM it receives on to every process, which SLURM has usually signalled already, so a
    second signal within :data:`RELAY_WINDOW_S` of the first is that relay, not a second request."""

    def __init__(self, trainer, relayed: bool = False):
        self.t, self.old, self.relayed, self.first_at = trainer, {}, relayed, None

    def _handler(self, signum, frame):
        if self.t._stop_signal is not None:  # second signal: stop now, no checkpoint
            if self.relayed and self.first_at is not None and time.monotonic() - self.first_at < RELAY_WINDOW_S:
                return
            raise Preempted(signum, None, None)
        self.t._stop_signal = signum
        self.first_at = time.monotonic()

    def note_stop(self) -> None:
        """The run stops because another process was signalled: a signal arriving now is the same request."""
        if self.first_at is None:
            self.first_at = time.monotonic()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False
