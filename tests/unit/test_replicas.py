from __future__ import annotations

import threading

import httpx
import openai
import pytest

from knowledge_flow.endpoint.replicas import ReplicaPool
from knowledge_flow.endpoint.urls import check_urls, split_urls

REQUEST = httpx.Request("POST", "http://x/v1/chat/completions")


def down() -> Exception:
    return openai.APIConnectionError(request=REQUEST)


def test_split_and_check_urls() -> None:
    assert split_urls(" http://a:1/v1/ ,http://b:2/v1,http://a:1/v1") == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(ValueError, match="http"):
        check_urls("http://a/v1,ftp://b")
    with pytest.raises(ValueError, match="empty"):
        check_urls(" , ")


def test_least_in_flight_then_fewest_requests() -> None:
    pool = ReplicaPool(["a", "b", "c"])
    gate = threading.Event()
    started = threading.Barrier(3)
    seen: list[str] = []

    def slow(url: str) -> str:
        seen.append(url)
        started.wait(timeout=5)
        gate.wait(timeout=5)
        return url

    threads = [threading.Thread(target=pool.call, args=(slow,)) for _ in range(2)]
    for t in threads:
        t.start()
    # two in flight on a and b: the next goes to c
    third = threading.Thread(target=pool.call, args=(slow,))
    third.start()
    gate.set()
    for t in [*threads, third]:
        t.join(timeout=5)
    assert sorted(seen) == ["a", "b", "c"]
    assert [s["requests"] for s in pool.stats()] == [1, 1, 1]


def test_failover_and_cooldown() -> None:
    now = [0.0]
    pool = ReplicaPool(["a", "b"], cooldown_s=5.0, clock=lambda: now[0])
    calls: list[str] = []

    def request(url: str) -> str:
        calls.append(url)
        if url == "a":
            raise down()
        return "ok from " + url

    assert pool.call(request) == "ok from b"  # a failed, re-sent to b at once
    assert calls == ["a", "b"]
    calls.clear()
    assert pool.call(request) == "ok from b"  # a is out of rotation
    assert calls == ["b"]
    now[0] = 6.0
    calls.clear()
    pool.call(request)
    assert calls == ["a", "b"]  # a back in rotation, fails again: now out for 10 s
    now[0] = 12.0
    calls.clear()
    pool.call(request)
    assert calls == ["b"]
    assert pool.stats()[0]["failures"] == 2


def test_request_errors_are_not_failed_over() -> None:
    pool = ReplicaPool(["a", "b"])
    response = httpx.Response(400, request=REQUEST)

    def bad(url: str) -> str:
        raise openai.BadRequestError("too long", response=response, body=None)

    with pytest.raises(openai.BadRequestError):
        pool.call(bad)
    assert [s["failures"] for s in pool.stats()] == [0, 0]
    assert sum(int(s["requests"]) for s in pool.stats()) == 1


def test_all_down_waits_then_raises() -> None:
    pool = ReplicaPool(["a", "b"], cooldown_s=0.05, max_cooldown_s=0.05, max_wait_s=0.3)
    attempts: list[str] = []

    def request(url: str) -> str:
        attempts.append(url)
        raise down()

    with pytest.raises(openai.APIConnectionError):
        pool.call(request)
    assert len(attempts) > 2  # it came back to the replicas after their cooldown


def test_single_replica_raises_at_once() -> None:
    pool = ReplicaPool(["a"])
    with pytest.raises(openai.APIConnectionError):
        pool.call(lambda url: (_ for _ in ()).throw(down()))
    assert pool.stats()[0]["failures"] == 1
