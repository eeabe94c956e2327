"""Knowledge Flow through the real vLLM server (CPU build): what the engine received, not only our records.

Evidence read from vLLM itself: its log of every request's sampling parameters (`--enable-log-requests`), its
`/metrics` counters and histograms, its `/tokenize` and `/detokenize`, and the usage of its responses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from knowledge_flow.endpoint.requests import CONTEXT_MARGIN
from knowledge_flow.persistence import get_store
from knowledge_flow.persistence.store import RolloutRow
from knowledge_flow.prompts import load_prompt_set
from knowledge_flow.strategies.positive_knowledge import SPEC
from tests.conftest import run_kflow
from tests.integration.scripts import PAPER_SET
from tests.vllm.conftest import VllmServer

PROBLEM = "Tom has 5 apples and buys 7 more. How many apples does Tom have now?"
#: Forces the real model to write a well-formed positive-knowledge rollout that adds one item to the list, every
#: time: the list grows by one item per rollout whatever the model would have answered.
ADDING = (
    r"\[Adding\?\]: Yes\n\[Novel Knowledge to Add to the List\]: When( [a-z]{2,8}){25,30}\.\n"
    r"\[Summary\]:( [a-z]{2,8}){8,12}\.\n\[Answer\]: \\boxed\{[0-9]{2}\}"
)
#: Twelve digits: three samples of it at a high temperature are not all the same.
DIGITS = r"[0-9]{12}"


def solve(server: VllmServer, db: Path, *args: str, problem: str = PROBLEM, timeout: float = 900) -> Any:
    return run_kflow(
        ["solve", problem, "--base-url", server.base_url, "--model", server.model, "--db", str(db), "--json", *args],
        env=server.kflow_env,
        timeout=timeout,
    )


def rollouts(db: Path) -> list[RolloutRow]:
    store = get_store(db)
    runs = store.list_runs()
    return list(store.rollouts(runs[-1].run_id))


def logged(params: str, name: str) -> str:
    match = re.search(rf"\b{name}=([^,)]+)", params)
    assert match is not None, params
    return match.group(1)


def test_a_run_sends_every_sampling_parameter_and_a_counted_budget(vllm_server: VllmServer, tmp_path: Path) -> None:
    seen = len(vllm_server.received())
    requests = vllm_server.metric("vllm:request_success_total")
    prompt_total = vllm_server.metric("vllm:prompt_tokens_total")
    generated = vllm_server.metric("vllm:generation_tokens_total")
    db = tmp_path / "kf.db"
    proc = solve(
        vllm_server,
        db,
        *("--iterations", "3", "--max-new-tokens", "48", "--temperature", "0.7"),
        *("--top-k", "7", "--min-p", "0.05", "--repetition-penalty", "1.1"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "done" and len(result["answers"]) == 3
    rows = rollouts(db)
    assert len(rows) == 3 and all(r.error is None for r in rows)

    # vLLM saw exactly three requests, with our sampling parameters (not its generation-config defaults)
    assert vllm_server.metric("vllm:request_success_total") - requests == 3
    received = vllm_server.received()[seen:]
    assert len(received) == 3
    for params, row in zip(received, rows, strict=True):
        assert logged(params, "temperature") == "0.7" and logged(params, "top_k") == "7"
        assert logged(params, "min_p") == "0.05" and logged(params, "repetition_penalty") == "1.1"
        assert int(logged(params, "max_tokens")) == row.max_tokens_sent == 48
    # the prompts were counted with the served tokenizer, exactly as the engine counted them
    assert all(row.prompt_tokens_counted == row.prompt_tokens for row in rows)
    assert vllm_server.metric("vllm:prompt_tokens_total") - prompt_total == sum(r.prompt_tokens for r in rows)
    assert vllm_server.metric("vllm:generation_tokens_total") - generated == sum(r.completion_tokens for r in rows)
    assert all(row.request_path == "chat" for row in rows)
    served = get_store(db).list_runs()[-1].served
    assert served == {
        "model": vllm_server.model,
        "context": vllm_server.max_model_len,
        "server": "vllm",
        "token_counting": "served (vLLM /tokenize)",
    }


def test_neutral_defaults_are_sent_too(vllm_server: VllmServer, tmp_path: Path) -> None:
    """Without sampling options the run sends no top-k, no min-p, no penalty (vLLM's own neutral values), not
    the model's generation_config (Qwen: top_k 20, repetition_penalty 1.05)."""
    seen = len(vllm_server.received())
    proc = solve(vllm_server, tmp_path / "d.db", "--iterations", "1", "--max-new-tokens", "16")
    assert proc.returncode == 0, proc.stderr
    (params,) = vllm_server.received()[seen:]
    assert logged(params, "top_k") in ("0", "-1") and logged(params, "min_p") == "0.0"
    assert logged(params, "repetition_penalty") == "1.0" and logged(params, "top_p") == "1.0"
    assert logged(params, "temperature") == "0.6"


def test_thinkers_share_one_request_with_n_and_log_probabilities(vllm_server: VllmServer, tmp_path: Path) -> None:
    n_count = vllm_server.metric("vllm:request_params_n_count")
    n_sum = vllm_server.metric("vllm:request_params_n_sum")
    generated = vllm_server.metric("vllm:generation_tokens_total")
    db = tmp_path / "t.db"
    extra = json.dumps({"structured_outputs": {"regex": DIGITS}})
    args = ("--iterations", "1", "--thinkers", "3", "--max-new-tokens", "40", "--temperature", "1.5")
    proc = solve(vllm_server, db, *args, "--extra-body", extra)
    assert proc.returncode == 0, proc.stderr
    rows = rollouts(db)
    assert len(rows) == 3
    assert vllm_server.metric("vllm:request_params_n_count") - n_count == 1  # one request ...
    assert vllm_server.metric("vllm:request_params_n_sum") - n_sum == 3  # ... for three choices
    # per choice: the length of its log-probabilities; together what the engine generated
    assert vllm_server.metric("vllm:generation_tokens_total") - generated == sum(r.completion_tokens for r in rows)
    assert all(r.confidence is not None and r.confidence < 0 for r in rows)
    assert len({r.content for r in rows}) > 1  # three samples, not one repeated (10^12 outputs to draw from)
    assert all(len(r.content) == 12 and r.content.isdigit() for r in rows)  # the engine applied the request's shape
    assert sorted(r.rank for r in rows if r.rank is not None) == [0, 1, 2]


def padded_problem(server: VllmServer, room: int) -> str:
    """The problem behind a preamble long enough that a later positive-knowledge prompt with an empty list
    leaves about `room` tokens of the context (counted by vLLM's tokenizer)."""
    table = load_prompt_set(PAPER_SET).table(SPEC)

    def padded(notes: int) -> str:
        return " ".join(f"Note {n}: apples are red and sweet." for n in range(notes)) + "\n" + PROBLEM

    def later_tokens(notes: int) -> int:
        text = table.render(
            "later",
            problem=padded(notes),
            answer_slot="<integer>",
            iteration=1,
            reference=": " + "w " * 14,
            knowledge=[],
        )
        body = {"model": server.model, "messages": [{"role": "user", "content": text}]}
        return int(server.post("/tokenize", body).json()["count"])

    # a note's length grows with its number's digits: extrapolate, then step to the most notes that fit
    target = server.max_model_len - CONTEXT_MARGIN - room
    base, ten = later_tokens(0), later_tokens(10)
    notes = (target - base) * 10 // (ten - base)
    while later_tokens(notes) > target:
        notes -= 1
    while later_tokens(notes + 1) <= target:
        notes += 1
    return padded(notes)


def test_budget_fits_the_context_as_the_knowledge_list_grows(vllm_server: VllmServer, tmp_path: Path) -> None:
    """Every request gets min(requested, context - prompt - margin), counted by vLLM's tokenizer; vLLM never
    lowers it (its max_tokens histogram holds what we sent) and never refuses one; a prompt that leaves no room
    is a failed rollout with the reason, and nothing is sent for it. The list is made to grow: positive
    knowledge under a structured-output regex adds one item with every rollout that is answered."""
    problem = padded_problem(vllm_server, room=400)  # one item takes a later prompt below the 400 asked for
    seen = len(vllm_server.received())
    db = tmp_path / "b.db"
    extra = json.dumps({"structured_outputs": {"regex": ADDING}})
    proc = solve(
        vllm_server,
        db,
        *("--iterations", "6", "--max-new-tokens", "400", "--extra-body", extra, "--prompts", PAPER_SET),
        *("--strategy", "positive-knowledge"),
        problem=problem,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: the list filled the context (rollouts with no room)
    rows = rollouts(db)
    assert len(rows) == 6
    received = vllm_server.received()[seen:]
    sent = [row for row in rows if row.error is None]
    assert len(received) == len(sent) >= 3  # nothing was sent for a rollout that failed
    context = vllm_server.max_model_len
    for row in rows:
        assert row.prompt_tokens_counted is not None
        room = context - row.prompt_tokens_counted - CONTEXT_MARGIN
        if row.error is None:
            assert row.max_tokens_sent == min(400, room) and row.prompt_tokens == row.prompt_tokens_counted
        else:
            assert room < 1 and "no room to generate" in row.error and f"{context} tokens" in row.error
    assert [int(logged(p, "max_tokens")) for p in received] == [row.max_tokens_sent for row in sent]
    # the list grew by one item per answered rollout, and the budget followed it down
    added = {row.iteration for row in rows if row.knowledge_added}
    assert {row.iteration for row in sent if row.finish_reason == "stop"} <= added <= {row.iteration for row in sent}
    assert len(added) >= 3
    budgets = [row.max_tokens_sent for row in sent]
    assert budgets[0] == 400 and all(budget < 400 for budget in budgets[1:])
    payload = json.loads(proc.stdout)
    assert len(payload["knowledge"]) == len(added) and all(i["text"].startswith("When ") for i in payload["knowledge"])


def test_a_prompt_longer_than_the_context_is_a_clear_failure(vllm_server: VllmServer, tmp_path: Path) -> None:
    requests = vllm_server.metric("vllm:request_success_total")
    problem = " ".join(f"Fact {n}: a long preamble." for n in range(500)) + "\n" + PROBLEM
    db = tmp_path / "long.db"
    proc = solve(vllm_server, db, "--iterations", "1", problem=problem)
    assert proc.returncode == 1, proc.stderr  # a run without a single answer is a failure
    assert "no room to generate" in proc.stderr
    (row,) = rollouts(db)
    assert row.error is not None and "the served context of" in row.error
    assert row.prompt_tokens_counted is not None and row.prompt_tokens_counted > vllm_server.max_model_len
    count = vllm_server.post("/tokenize", {"model": vllm_server.model, "messages": json.loads(row.prompt_json)}).json()
    assert count["count"] == row.prompt_tokens_counted  # vLLM's own count of the same prompt
    assert vllm_server.metric("vllm:request_success_total") == requests  # nothing was sent
