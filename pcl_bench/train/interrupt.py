"""Stopping on SIGTERM or SIGINT (SLURM preemption, Ctrl-C) at a point the run resumes from exactly.

Inside :meth:`StopSignals.deferred` (the training steps and the checkpoint write after them) a signal only
sets :attr:`StopSignals.signum`: the loop finishes its step, writes a checkpoint at that step and raises
:class:`Interrupted`. Elsewhere (setup, the E-step, the final kNN) it raises :class:`Interrupted` at once,
since ``last.pt`` already holds the state to resume from. A second signal always stops at once.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped on a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager that turns SIGTERM / SIGINT into an orderly stop (main thread only; elsewhere inert)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferred = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = signum
        if not (first and self._deferred):
            raise self.stop("; the run folder's last.pt holds the state to continue from with --resume")

    def stop(self, where: str) -> Interrupted:
        """The exception that ends the run, its message ``stopped by <SIGNAL><where>``."""
        signum = self.signum or signal.SIGTERM  # in a multi-process run, another rank may have had the signal
        return Interrupted(f"stopped by {signal.Signals(signum).name}{where}", signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals inside only set :attr:`signum`; the caller checks :attr:`requested` at safe points."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False


def ignore_in_worker() -> None:
    """DataLoader workers share the terminal's process group (Ctrl-C) and the job's (scancel): they ignore
    the signals and leave the stop to the main process, which shuts them down."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
