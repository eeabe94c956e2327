"""Parsed rollouts (candidates) for the thinker-selection tests."""

from __future__ import annotations

from typing import Any

from knowledge_flow.records import Candidate


def candidate(
    rid: str, answer: str | None, summary: str | None = None, confidence: float | None = None, **extra: Any
) -> Candidate:
    return Candidate(
        rollout_id=rid,
        answer=answer,
        summary=summary,
        error_report=None,
        extras={},
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        temperature=0.6,
        confidence=confidence,
        error=extra.pop("error", None),
        **extra,
    )
