"""A thinking model through the real vLLM: a chat template whose generation prompt opens a think block, and
vLLM's qwen3 reasoning parser (`vllm_thinking_server`). The prefill of the Qwen prompt set must continue inside
the thinking block (token ids through /v1/completions), reasoning and final text are both stored, and a
rollout that never closes its thinking still gives its answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knowledge_flow.persistence import get_store
from knowledge_flow.persistence.store import RolloutRow
from knowledge_flow.prompts import load_prompt_set
from knowledge_flow.strategies.knowledge_flow import SPEC
from tests.conftest import run_kflow
from tests.vllm.conftest import VllmServer

PROBLEM = "Tom has 5 apples and buys 7 more. How many apples does Tom have now?"
CLOSED = r"[a-z ,]{20,60}\.\n</think>\n\n\[Summary\]: [a-z ]{10,40}\.\n\[Answer\]: \\boxed\{12\}"
UNCLOSED = r"[a-z ,]{20,60}\. so the final answer is \\boxed\{12\}\."
PREFILL = load_prompt_set("kf-qwen").table(SPEC).render("prefill_later")


def solve(server: VllmServer, db: Path, regex: str) -> Any:
    extra = json.dumps({"structured_outputs": {"regex": regex}})
    args = ["solve", PROBLEM, "--base-url", server.base_url, "--model", server.model, "--db", str(db), "--json"]
    args += ["--model-family", "qwen3-thinking", "--iterations", "2", "--max-new-tokens", "200", "--extra-body", extra]
    return run_kflow(args, env=server.kflow_env, timeout=900)


def rollouts(db: Path) -> list[RolloutRow]:
    store = get_store(db)
    return list(store.rollouts(store.list_runs()[-1].run_id))


def detokenize(server: VllmServer, ids: list[int]) -> str:
    return str(server.post("/detokenize", {"model": server.model, "tokens": ids}).json()["prompt"])


def test_prefill_continues_inside_the_thinking_block(vllm_thinking_server: VllmServer, tmp_path: Path) -> None:
    server = vllm_thinking_server
    seen = len(server.received())
    db = tmp_path / "think.db"
    proc = solve(server, db, CLOSED)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answers"] == ["12", "12"]
    first, second = rollouts(db)
    assert len(server.received()) - seen == 2
    # rollout 0: no prefill (the set has none for it); vLLM's reasoning parser split the output
    assert first.request_path == "chat" and first.prefill is None
    assert first.reasoning and "</think>" not in first.content and "[Answer]" in first.content
    # rollout 1: the set's prefill, sent as token ids after the template's generation prompt
    assert second.request_path == "completion" and second.prefill == PREFILL
    assert second.reasoning is not None and second.reasoning.startswith(PREFILL)
    assert "[Answer]: \\boxed{12}" in second.content and second.parsed_from == "content"
    messages = json.loads(second.prompt_json)
    rendered = server.post("/tokenize", {"model": server.model, "messages": messages}).json()["tokens"]
    prefill_ids = server.post(
        "/tokenize", {"model": server.model, "prompt": PREFILL, "add_special_tokens": False}
    ).json()["tokens"]
    ids = rendered + prefill_ids
    assert second.prompt_tokens == len(ids) == second.prompt_tokens_counted  # what the engine received
    assert detokenize(server, ids).endswith("<|im_start|>assistant\n<think>\n" + PREFILL)
    # through the chat API the same prefill would land after a closed, empty think block
    chat = server.post(
        "/tokenize",
        {
            "model": server.model,
            "messages": [*messages, {"role": "assistant", "content": PREFILL}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    ).json()["tokens"]
    assert detokenize(server, chat).endswith("<think>\n\n</think>\n\n" + PREFILL)


def test_thinking_that_never_closes_still_gives_its_answer(vllm_thinking_server: VllmServer, tmp_path: Path) -> None:
    db = tmp_path / "open.db"
    proc = solve(vllm_thinking_server, db, UNCLOSED)
    assert proc.returncode == 0, proc.stderr
    first, second = rollouts(db)
    # vLLM put everything in the reasoning field; the answer is read from there, and said so
    assert first.content == "" and first.reasoning and "the final answer is \\boxed{12}" in first.reasoning
    assert first.parsed_from == "reasoning" and first.answer == "12"
    assert second.parsed_from == "reasoning" and second.answer == "12"
    # the reference solution of rollout 1 is that text, not "no reference solution"
    user = json.loads(second.prompt_json)[-1]["content"]
    assert "No reference solution available" not in user and "the final answer is" in user
