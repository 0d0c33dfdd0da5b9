"""Stopping a run cleanly on SIGTERM/SIGINT (SLURM preemption, Ctrl-C).

The first signal only sets a flag; the loop finishes the current optimizer step, checkpoints, and raises
:class:`Preempted` (exit code 128 + signal, 143 for SIGTERM). A second signal stops at once without a checkpoint.
"""
from __future__ import annotations

import signal
import threading


class Preempted(SystemExit):
    """Raised after a signal-triggered checkpoint; exits with 128 + signal number (143 for SIGTERM)."""

    def __init__(self, signum: int = signal.SIGTERM, step: int | None = None, checkpoint_dir=None):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        super().__init__(128 + int(signum))

    def __str__(self) -> str:
        return f"preempted by signal {self.signum} after step {self.step}; state saved in {self.checkpoint_dir}"


class SignalGuard:
    """While active (main thread only), SIGTERM/SIGINT set ``trainer._stop_signal``; restores old handlers."""

    def __init__(self, trainer):
        self.t, self.old = trainer, {}

    def _handler(self, signum, frame):
        if self.t._stop_signal is not None:  # second signal: stop now, no checkpoint
            raise Preempted(signum, None, None)
        self.t._stop_signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False
