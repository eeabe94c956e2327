"""B2-real, tiny: both loops of `benchmarks.b2_real` against the lane's vLLM server (the full run, with its own
servers and prefix caching on and off, is `python -m benchmarks.b2_real`; its figures are in the docs)."""

from __future__ import annotations

from collections import Counter

from benchmarks import b2_real

from knowledge_flow.options import SEED_STRIDE
from tests.vllm.conftest import VllmServer
from tests.vllm.test_rollouts import logged


def test_both_loops_on_vllm_send_the_same_seeds(vllm_server: VllmServer) -> None:
    seen = len(vllm_server.received())
    rows = b2_real.load_rows(2)
    params = {"model": vllm_server.model, "max_new_tokens": 32, "seed": 5, "temperature": 0.6}
    ours, barrier = b2_real.compare_loops(vllm_server.base_url, rows, 2, params)
    assert ours.loop.startswith("no barrier") and barrier.loop.startswith("barrier")
    for measured in (ours, barrier):
        assert measured.rollouts == 4 and measured.wall_s > 0
        assert measured.prompt_tokens > 0 and 0 < measured.completion_tokens <= 4 * 32
    received = vllm_server.received()[seen:]
    assert len(received) == 8  # what vLLM logged: 2 loops x 2 problems x 2 rollouts
    seeds = Counter(int(logged(params_text, "seed")) for params_text in received)
    assert seeds == {5: 4, 5 + SEED_STRIDE: 4}  # rollout k of every problem, in both loops: seed + 1024 k
