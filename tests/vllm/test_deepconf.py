"""DeepConf's requests through the real vLLM server (CPU build): what only vLLM does.

- The chat path returns the sampled token first and fills up to the count asked for, so k + 1 log-probabilities
  are asked for (the exact top k is then always there); `kflow serve vllm` allows 21 (``--max-logprobs``).
- The completions path keys candidates by their text, merging tokens that decode alike, unless
  ``return_tokens_as_token_ids`` is set.
- ``stream_options.continuous_usage_stats`` puts the server's token count in every chunk, so a stream the
  client closes still has the server's count up to the last chunk read; vLLM's generation counter agrees.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from knowledge_flow.endpoint.client import Sampling, client_for
from knowledge_flow.endpoint.served import get_served
from knowledge_flow.endpoint.stream import USAGE_AT_CLOSE, chat_stream, complete_ids_stream
from knowledge_flow.persistence import get_store
from tests.vllm.conftest import VllmServer
from tests.vllm.test_rollouts import logged, solve


def sampling(server: VllmServer, top: int, temperature: float) -> Sampling:
    return Sampling(
        model=server.model,
        temperature=temperature,
        top_p=1.0,
        max_tokens=200,
        logprobs=True,
        top_logprobs=top,
        extra={"seed": 0},  # the prompt below then makes tokens that decode alike (emoji bytes) on the way
    )


def settled(server: VllmServer, name: str) -> float:
    """Metric `name` once two reads a second apart agree (within a minute)."""
    value, deadline = server.metric(name), time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1.0)
        value, before = server.metric(name), value
        if value == before:
            break
    return value


def test_closed_streams_keep_the_servers_count_and_every_candidate(vllm_server: VllmServer) -> None:
    client = client_for(vllm_server.base_url, "EMPTY", timeout=600, max_retries=0)
    messages = [{"role": "user", "content": "Write a long story about the sea."}]
    seen: list[list[float]] = []

    def stop_after_40(tops: list[float]) -> bool:
        seen.append(tops)
        return len(seen) >= 40

    generated = vllm_server.metric("vllm:generation_tokens_total")
    aborted = len(vllm_server.aborted())
    # 1000 tokens and no end of sequence: a stream left running would have the engine make all 1000
    long = replace(sampling(vllm_server, 21, 1.3), max_tokens=1000, extra={"seed": 0, "ignore_eos": True})
    completion = chat_stream(client, messages, long, on_position=stop_after_40)
    assert completion.cancelled and completion.usage_source == USAGE_AT_CLOSE
    assert completion.completion_tokens == len(seen) == 40  # the server's own count at the last chunk read
    assert all(len(tops) == 21 for tops in seen)  # k + 1: the sampled token and the top 20, or the top 21
    # the server aborted the closed stream (its log says so) and the engine stopped: its generation counter settles
    # short of the 1000 tokens asked for (how far past 40 depends on how busy the machine is when the close arrives)
    deadline = time.monotonic() + 120
    while len(vllm_server.aborted()) == aborted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(vllm_server.aborted()) == aborted + 1
    assert 40 <= settled(vllm_server, "vllm:generation_tokens_total") - generated < 1000

    # the completions path: keyed by token id, nothing merges (keyed by text, tokens that decode alike do)
    served = get_served(vllm_server.base_url, "EMPTY", vllm_server.model)
    ids = served.text_ids("Emoji story: 🐳🌊")
    seen.clear()
    completion = complete_ids_stream(client, ids, sampling(vllm_server, 21, 1.3), on_position=stop_after_40)
    assert completion.usage_source == USAGE_AT_CLOSE and completion.completion_tokens == 40
    assert all(len(tops) >= 21 for tops in seen)
    merged = vllm_server.post(
        "/v1/completions",
        {"model": vllm_server.model, "prompt": ids, "max_tokens": 40, "temperature": 1.3, "logprobs": 21, "seed": 0},
    ).json()["choices"][0]["logprobs"]["top_logprobs"]
    assert any(len(entry) < 21 for entry in merged if entry)


def test_a_deepconf_run_asks_for_k_plus_one(vllm_server: VllmServer, tmp_path: Path) -> None:
    seen = len(vllm_server.received())
    db = tmp_path / "dc.db"
    proc = solve(
        vllm_server,
        db,
        *("--strategy", "deepconf", "--warmup-traces", "2", "--thinkers", "2", "--trace-budget", "4"),
        *("--max-new-tokens", "48", "--confidence-window", "8", "--stop-policy", "fixed"),
        problem="What is 2 + 3? Put the final answer in \\boxed{}.",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "done"
    received = vllm_server.received()[seen:]
    assert len(received) == 4 and all(logged(params, "logprobs") == "21" for params in received)
    store = get_store(db)
    rows = store.rollouts(store.list_runs()[-1].run_id)
    assert sorted(r.finish_order for r in rows) == [0, 1, 2, 3]
    for row in rows:
        assert row.error is None and row.conf_tokens == row.completion_tokens  # a confidence per token
        assert row.usage_source in ("server", USAGE_AT_CLOSE)
