"""A time limit for Python code running in any thread: a watchdog thread raises an exception in a thread that
ran past its limit.

A thread cannot be stopped from outside, and a signal (``SIGALRM``) reaches only the main thread; an
exception set with ``PyThreadState_SetAsyncExc`` is raised in the target thread at its next bytecode, which
ends any Python-level loop (a template's ``for`` loops, macro calls). It cannot interrupt one long C-level
operation (a huge power of integers, a huge string): those are refused before they run
(`knowledge_flow.prompts.bounds`). The limit is CPU time of the thread (``pthread_getcpuclockid``: a loaded
machine does not make a template time out), with a wall-time limit as well. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator


class TimeLimitExceeded(BaseException):
    """Raised by the watchdog in a thread that ran past its limit (a BaseException, so that no
    `except Exception` on the way swallows it)."""


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


def _cpu_clock(ident: int) -> int | None:
    try:
        return time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):  # not on this platform: wall time only
        return None


class _Watch:
    __slots__ = ("clock", "cpu_limit", "cpu_start", "fired", "ident", "wall_deadline")

    def __init__(self, cpu_seconds: float, wall_seconds: float) -> None:
        self.ident = threading.get_ident()
        self.clock = _cpu_clock(self.ident)
        self.cpu_start = time.clock_gettime(self.clock) if self.clock is not None else 0.0
        self.cpu_limit = cpu_seconds
        self.wall_deadline = time.monotonic() + wall_seconds
        self.fired = False

    def over(self, now: float) -> bool:
        if now > self.wall_deadline:
            return True
        if self.clock is None:
            return False
        try:
            return time.clock_gettime(self.clock) - self.cpu_start > self.cpu_limit
        except OSError:
            return False


class Watchdog:
    """One daemon thread per process that stops code running past its time (see the module's doc)."""

    POLL_S = 0.02

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watches: dict[int, _Watch] = {}
        self._thread: threading.Thread | None = None

    def watch(self, cpu_seconds: float, wall_seconds: float) -> _Watch:
        watch = _Watch(cpu_seconds, wall_seconds)
        with self._lock:
            self._watches[id(watch)] = watch
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="kflow-time-limit", daemon=True)
                self._thread.start()
            self._lock.notify()
        return watch

    def release(self, watch: _Watch) -> None:
        """After the guarded code: the watch can no longer fire; an exception it raised but that was not yet
        delivered is withdrawn."""
        with self._lock:
            self._watches.pop(id(watch), None)
            if watch.fired:
                _set_async_exc(watch.ident, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._watches:
                    self._lock.wait()
                now = time.monotonic()
                for key, watch in list(self._watches.items()):
                    if watch.over(now):
                        watch.fired = True
                        del self._watches[key]
                        _set_async_exc(watch.ident, TimeLimitExceeded)
            time.sleep(self.POLL_S)


WATCHDOG = Watchdog()


@contextlib.contextmanager
def time_limit(cpu_seconds: float, wall_seconds: float) -> Iterator[None]:
    """Run the block in this thread under the limits; `TimeLimitExceeded` when it runs past them."""
    watch = WATCHDOG.watch(cpu_seconds, wall_seconds)
    try:
        yield
    finally:
        WATCHDOG.release(watch)
