"""A re-vote over every trace refuses a problem whose stored traces miss a wave it ran.

Sealed stores name such a problem damaged before any re-vote (see tests/integration/test_deepconf_fidelity.py);
this is the re-vote's own check, which rows written before seals existed still depend on."""

from __future__ import annotations

import pytest

from knowledge_flow.evaluation.revote import MissingTraces, check_complete
from knowledge_flow.records import TraceVote


def trace(iteration: int) -> TraceVote:
    return TraceVote(rollout_id=f"r{iteration}", iteration=iteration, answer="5", measures=None, counted=True)


def test_a_wave_without_traces_is_refused_by_name() -> None:
    with pytest.raises(MissingTraces, match=r"problem 3: the final-answer rule conf-vote:lowest .* iteration\(s\) 1;"):
        check_complete("problem 3", 3, [trace(0), trace(2)], "conf-vote:lowest")


def test_complete_waves_pass() -> None:
    check_complete("problem 3", 3, [trace(0), trace(1), trace(1), trace(2)], "majority-traces")
