"""The demo's llama.cpp server takes the cores that other work leaves free."""

from __future__ import annotations

import pytest

from knowledge_flow.server_launch import local


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [(2, 0.1, 2), (2, 0.6, 1), (2, 5.3, 1), (8, 3.4, 5), (8, 0.0, 8), (1, 0.0, 1)],
)
def test_spare_threads(monkeypatch: pytest.MonkeyPatch, cores: int, load: float, threads: int) -> None:
    monkeypatch.setattr(local.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(local.os, "getloadavg", lambda: (load, load, load))
    assert local.spare_threads() == threads


def test_without_a_load_average_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr(local.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(local.os, "getloadavg", unavailable)
    assert local.spare_threads() == 4
