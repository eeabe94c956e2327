"""Spread requests over several OpenAI-compatible endpoints (vLLM replicas on several nodes).

A request goes to the healthy replica with the fewest requests in flight (ties: fewest sent so far, then
the order given). A replica whose request fails with a connection error, a timeout, a 5xx or a 429 is taken
out of rotation for a cooldown that doubles with each consecutive failure (5 s up to 60 s) and the request
is re-sent to another replica at once. When every replica is out, the pool waits for the first to come back,
up to `max_wait_s` in all, then raises the last error. Other errors (a 400 for a prompt that is too long,
say) are the request's fault, not the replica's: they are raised at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import openai

from knowledge_flow.endpoint.urls import address, split_urls

T = TypeVar("T")

FAILOVER_ERRORS: tuple[type[Exception], ...] = (
    openai.APIConnectionError,  # includes timeouts
    openai.InternalServerError,
    openai.RateLimitError,
)


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0


class ReplicaPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 60.0,
        max_wait_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a replica pool needs at least one URL")
        self.replicas = [Replica(url) for url in urls]
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._lock = threading.Lock()

    def _acquire(self) -> Replica | float:
        """A replica (marked in flight), or the seconds until one comes back."""
        with self._lock:
            now = self._clock()
            healthy = [r for r in self.replicas if r.down_until <= now]
            if not healthy:
                return min(r.down_until for r in self.replicas) - now
            chosen = min(healthy, key=lambda r: (r.in_flight, r.requests, self.replicas.index(r)))
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def _release(self, replica: Replica, failed: bool) -> None:
        with self._lock:
            replica.in_flight -= 1
            if failed:
                replica.failures += 1
                replica.consecutive_failures += 1
                cooldown = min(self.max_cooldown_s, self.cooldown_s * 2 ** (replica.consecutive_failures - 1))
                replica.down_until = self._clock() + cooldown
            else:
                replica.consecutive_failures = 0
                replica.down_until = 0.0

    def call(self, request: Callable[[str], T]) -> T:
        """Run `request(url)` on a replica, failing over as described above."""
        if len(self.replicas) == 1:  # nothing to fail over to: the client's own retries apply
            replica = self.replicas[0]
            with self._lock:
                replica.in_flight += 1
                replica.requests += 1
            try:
                result = request(replica.url)
            except FAILOVER_ERRORS:
                self._release(replica, failed=True)
                raise
            self._release(replica, failed=False)
            return result
        waited = 0.0
        last_error: Exception | None = None
        while True:
            acquired = self._acquire()
            if not isinstance(acquired, Replica):
                if waited >= self.max_wait_s:
                    assert last_error is not None
                    raise last_error
                pause = min(max(acquired, 0.05), self.max_wait_s - waited)
                time.sleep(pause)
                waited += pause
                continue
            try:
                result = request(acquired.url)
            except FAILOVER_ERRORS as exc:
                last_error = exc
                self._release(acquired, failed=True)
                continue
            except Exception:
                self._release(acquired, failed=False)
                raise
            self._release(acquired, failed=False)
            return result

    def stats(self) -> list[dict[str, int | str]]:
        with self._lock:
            return [
                {"url": address(r.url).shown, "requests": r.requests, "failures": r.failures} for r in self.replicas
            ]


_POOLS: dict[tuple[str, ...], ReplicaPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(base_url: str) -> ReplicaPool:
    """One pool per set of URLs and process, so in-flight counts cover every thread."""
    key = tuple(split_urls(base_url))
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = ReplicaPool(key)
            _POOLS[key] = pool
        return pool
