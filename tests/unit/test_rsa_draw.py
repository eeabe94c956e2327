"""RSA's subsets (`strategies.rsa.draw_subsets`): K distinct traces per member, the same draw for the same seed,
uniform or in proportion to the traces' confidence."""

from __future__ import annotations

from collections import Counter

import pytest

from knowledge_flow.strategies.rsa import confidence_weights, draw_subsets


def test_each_member_draws_k_distinct_traces_reproducibly() -> None:
    pool = [0, 2, 3, 5, 7]
    subsets = draw_subsets(pool, 6, 3, "run:1:rsa")
    assert len(subsets) == 6 and all(len(set(s)) == 3 and set(s) <= set(pool) for s in subsets)
    assert draw_subsets(pool, 6, 3, "run:1:rsa") == subsets  # a resumed loop draws the same
    assert draw_subsets(pool, 6, 3, "run:2:rsa") != subsets
    assert len({tuple(sorted(s)) for s in subsets}) > 1
    # fewer usable traces than K: all of them, each member in its own order
    few = draw_subsets([4, 9], 5, 3, "s")
    assert all(sorted(s) == [4, 9] for s in few) and draw_subsets([], 3, 2, "s") == [[], [], []]


def test_uniform_draws_cover_the_pool_evenly() -> None:
    counts = Counter(i for s in draw_subsets(list(range(4)), 4000, 2, "u") for i in s)
    assert all(abs(n / 8000 - 0.25) < 0.02 for n in counts.values())


def test_confidence_draws_in_proportion_to_the_weights() -> None:
    counts = Counter(s[0] for s in draw_subsets([10, 20, 30], 6000, 1, "c", weights=[1.0, 2.0, 3.0]))
    assert counts[10] / 6000 == pytest.approx(1 / 6, abs=0.02)
    assert counts[30] / 6000 == pytest.approx(3 / 6, abs=0.02)
    pairs = draw_subsets([10, 20, 30], 50, 2, "c", weights=[1.0, 2.0, 3.0])
    assert all(len(set(p)) == 2 for p in pairs)  # without replacement


def candidate(confidence: float | None, lowest: float | None) -> dict[str, object]:
    return {"confidence": confidence, "measures": {"lowest": lowest} if lowest is not None else {}}


def test_confidence_weights_floor_the_unscored() -> None:
    given = [candidate(None, 12.0), candidate(None, None), candidate(None, 3.0)]
    assert confidence_weights(given, "lowest") == [12.0, 3.0, 3.0]  # type: ignore[arg-type]
    assert confidence_weights([candidate(None, None)], "lowest") is None  # type: ignore[list-item]


def test_rsa_options_are_checked() -> None:
    from knowledge_flow.params import resolve_params

    params = resolve_params({"strategy": "rsa", "model": "m"})
    assert (params["thinkers"], params["iterations"], params["aggregation_size"]) == (16, 10, 4)
    assert params["select_rule"] == "vote" and params["final_answer_rule"] == "last"
    with pytest.raises(ValueError, match="cannot exceed the population"):
        resolve_params({"strategy": "rsa", "model": "m", "thinkers": 3, "aggregation_size": 4})
    with pytest.raises(ValueError, match="draws traces by a DeepConf measure"):
        resolve_params({"strategy": "rsa", "model": "m", "aggregation_pick": "confidence"})
    picked = resolve_params(
        {"strategy": "rsa", "model": "m", "aggregation_pick": "confidence", "confidence_score": "lowest"}
    )
    assert picked["aggregation_pick"] == "confidence" and picked["top_logprobs"] > 0
