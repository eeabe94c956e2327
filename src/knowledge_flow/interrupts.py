"""Ctrl-C and SIGTERM (what Slurm sends at the end of an allocation): stop soon, keep what is complete.

`StopRequest` turns the first SIGINT or SIGTERM into a request to stop: no new rollout starts, what is in
flight is abandoned (its response was never stored, so a resume sends it again), and the command finishes its
bookkeeping and exits with code 130. A second signal ends the process at once.

With ``raise_in_main=True`` the first signal also raises `KeyboardInterrupt` in the main thread: a single
run (`kflow solve`) is usually waiting for a response there, and a signal handler is the only way to stop
waiting at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self, *, raise_in_main: bool = False) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self.raise_in_main = raise_in_main
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():  # the second signal: now
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: stopping now\n")
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        self.signal_name = signal.Signals(signum).name
        self.event.set()
        if self.raise_in_main:
            raise KeyboardInterrupt

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def exit_now(code: int = EXIT_INTERRUPTED) -> None:
    """End the process without waiting for worker threads still blocked on a response (abandoned)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
