"""Ctrl-C that never cuts a storage write in half.

A KeyboardInterrupt raised inside a SQLAlchemy commit can leave the SQLite connection
holding its write lock; the next write (Optuna marking the trial FAIL) then waits and
fails with "database is locked", and the search dies with a traceback instead of exiting
cleanly. `CtrlC` raises KeyboardInterrupt at once only while a candidate trains (no
storage I/O there: `training()`); anywhere else the signal is held and raised at the next
safe point: the start of training or the end of a trial (`check()`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CtrlC"]


class CtrlC:
    """Holds SIGINT outside `training()` while `installed()`; a no-op when not installed."""

    def __init__(self) -> None:
        self.pending = False
        self.armed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        self.pending = True

    def check(self, *_: Any) -> None:
        """Raise a held Ctrl-C (usable as an Optuna callback: ``check(study, trial)``)."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextmanager
    def training(self) -> Iterator[None]:
        """Ctrl-C interrupts the body immediately (a held one is raised on entry)."""
        self.check()
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT through this guard (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
