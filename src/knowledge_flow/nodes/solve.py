"""`solve`: the rollouts of one iteration (one per thinker). Full prompts and outputs go to the rollout
store; the state gets their ids. After a crash, rollouts already stored are reused, never requested again.

The strategy says how many thinkers the iteration has and builds one prompt per thinker (the same one for
most strategies; TRT gives each thinker its own strategy). Thinkers with the same prompt share requests
(one request with ``n`` at equal temperatures, see `endpoint.sample`); different prompts are sent
concurrently. Each request's rollouts are stored as soon as it returns, so a crash in the middle of an
iteration loses only the requests still in flight. The endpoint layer counts each prompt's tokens with the
served tokenizer, fits the generation budget to the served context and picks the request path (see
`knowledge_flow.endpoint.requests`).

Streaming (strategies that ask for it, e.g. deepconf): every thinker is its own streamed request with top
log-probabilities; the client stops a trace once its group confidence falls below the strategy's threshold
(see `knowledge_flow.strategies.confidence.WindowMonitor`) and stores it with the tokens it received and the
stop reason ``gconf_threshold``; the traces of a wave are stored with the order they finished in, and the stop
policy may close the wave's running streams as each trace finishes (`knowledge_flow.nodes.waves`). Streams go
out concurrently, except to llama.cpp's server, which ends a running stream when another request arrives:
there they go one after the other.

With top log-probabilities (run option `top_logprobs`), each rollout is stored with its DeepConf measures
and its per-token confidences.

Faults follow `knowledge_flow.nodes.calls`: a rollout whose request failed for good is stored as failed, with
its reason, and the run goes on: a failed rollout has no answer, so it changes neither the knowledge nor the
reference (`stop_check` ends a run whose rollouts keep failing).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from langgraph.runtime import Runtime

from knowledge_flow.context import Context
from knowledge_flow.endpoint import Completion, Prepared, PromptTooLong, Sampling, prepare, sample, send_stream
from knowledge_flow.endpoint.requests import MESSAGE_OVERHEAD, seed_of
from knowledge_flow.nodes.calls import (
    CONTENT_ATTEMPTS,
    CONTENT_FAULTS,
    REQUEST_FAULTS,
    Endpoint,
    Resends,
    endpoint_of,
    sampling_of,
    with_faults,
)
from knowledge_flow.nodes.common import guarded, step_of, store_of
from knowledge_flow.nodes.waves import NOT_SENT, Wave, note_inactive_filter, open_wave, text_of, unsent
from knowledge_flow.options import DEFAULT_WINDOW, SEED_STRIDE
from knowledge_flow.persistence.compression import pack_confidences
from knowledge_flow.persistence.store import RolloutRow, RolloutStore, utcnow
from knowledge_flow.prompts import PromptSetError
from knowledge_flow.state import State
from knowledge_flow.strategies import RolloutPrompt, Streaming, get_strategy
from knowledge_flow.strategies.confidence import Measures, WindowMonitor, measures, token_confidences
from knowledge_flow.strategies.thinkers import spread
from knowledge_flow.text.tokens import estimate_tokens

__all__ = ["CONTENT_ATTEMPTS", "CONTENT_FAULTS", "REQUEST_FAULTS", "rollout_id", "sample_or_fault", "solve"]


def cut_prompt_tokens(prepared: Prepared | None) -> int:
    """A streamed rollout's prompt tokens when the server sent no usage (always for a stopped stream; some
    servers never do): as counted before sending, or estimated when the server cannot count."""
    if prepared is None:
        return 0
    if prepared.prompt_tokens is not None:
        return prepared.prompt_tokens
    return sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD for m in prepared.messages)


def rollout_id(run_id: str, iteration: int, index: int = 0) -> str:
    return f"{run_id}:{iteration}:{index}"


def sample_or_fault(
    send_one: Callable[[Sampling], list[Completion]],
    sampling: Sampling,
    temperatures: list[float],
    secrets: tuple[str, ...],
    resends: Resends | None = None,
) -> list[Completion] | str:
    """The completions, or the reason the rollouts failed."""
    return with_faults(lambda: sample(send_one, sampling, temperatures), secrets, resends)


@dataclass(frozen=True)
class Outcome:
    """One thinker's result: its completion (or the reason it failed) and its per-token confidences."""

    completion: Completion | None
    error: str | None
    confidences: list[float] | None = None
    stop_reason: str | None = None
    """Streamed: why the trace does not vote (`nodes.waves`)."""
    finish_order: int | None = None
    """Streamed: its place in the order the run's traces finished."""


@dataclass(frozen=True)
class Iteration:
    """What every request of the iteration shares."""

    state: State
    ids: list[str]
    prompts: list[RolloutPrompt]
    temperatures: list[float]
    sampling: Sampling
    streaming: Streaming | None
    endpoint: Endpoint
    store: RolloutStore
    wave: Wave | None = None

    def trace_measures(self, outcome: Outcome) -> tuple[list[float] | None, Measures | None]:
        """A rollout's per-token confidences and DeepConf measures (only where the run asked for candidates)."""
        params = self.state["params"]
        top = int(params.get("top_logprobs") or 0)
        if not top:
            return None, None
        confidences = outcome.confidences
        if confidences is None and outcome.completion is not None and outcome.completion.top_logprobs:
            confidences = token_confidences(outcome.completion.top_logprobs, top)
        window = int(params.get("confidence_window") or DEFAULT_WINDOW)
        return confidences, measures(confidences, window) if confidences else None

    def store_outcomes(
        self,
        indices: list[int],
        prepared: Prepared | None,
        outcomes: list[Outcome],
        *,
        counted: int | None = None,
        retries: int = 0,
    ) -> None:
        """RolloutStore the thinkers' rollouts; `counted`: the prompt's tokens as counted before sending (also when it
        was too long to send); `retries`: requests sent again for them."""
        state, params = self.state, self.state["params"]
        prompt = self.prompts[indices[0]]
        prompt_json = json.dumps(prompt.messages, ensure_ascii=False)
        window = int(params.get("confidence_window") or DEFAULT_WINDOW)
        for index, outcome in zip(indices, outcomes, strict=True):
            completion = outcome.completion or Completion(
                "", None, "error", 0, 0, 0.0, temperature=self.temperatures[index]
            )
            confidences, found = self.trace_measures(outcome)
            streamed = self.streaming is not None and outcome.completion is not None
            streamed = streamed and completion.usage_source != NOT_SENT
            prompt_tokens = completion.prompt_tokens or (cut_prompt_tokens(prepared) if streamed else 0)
            self.store.add_rollout(
                RolloutRow(
                    id=self.ids[index],
                    run_id=state["run_id"],
                    thread_id=state["thread_id"],
                    iteration=state.get("iteration", 0),
                    index=index,
                    created_at=utcnow(),
                    prompt_json=prompt_json,
                    prefill=prompt.prefill,
                    request_path=prepared.path if prepared is not None else None,
                    max_tokens_requested=prompt.max_tokens,
                    max_tokens_sent=prepared.max_tokens if prepared is not None else None,
                    prompt_tokens_counted=prepared.prompt_tokens if prepared is not None else counted,
                    content=completion.content,
                    reasoning=completion.reasoning,
                    finish_reason=completion.finish_reason,
                    prompt_tokens=prompt_tokens or 0,
                    completion_tokens=completion.completion_tokens,
                    latency_s=completion.latency_s,
                    temperature=completion.temperature,
                    confidence=completion.confidence,
                    endpoint=completion.endpoint,
                    error=outcome.error,
                    retries=retries,
                    strategy_json=json.dumps(prompt.strategy, ensure_ascii=False) if prompt.strategy else None,
                    conf_tokens=found.tokens if found else None,
                    conf_mean=found.mean if found else None,
                    conf_lowest=found.lowest if found else None,
                    conf_bottom10=found.bottom10 if found else None,
                    conf_tail=found.tail if found else None,
                    conf_window=window if found else None,
                    conf_threshold=self.streaming.threshold if self.streaming is not None else None,
                    stop_reason=outcome.stop_reason,
                    token_confidence=pack_confidences(confidences) if confidences else None,
                    finish_order=outcome.finish_order,
                    usage_source=completion.usage_source,
                    parents_json=json.dumps(list(self.prompts[index].parents)) if self.prompts[index].parents else None,
                ),
                len(self.ids),
            )

    def run_batch(self, indices: list[int]) -> None:
        """Thinkers with one prompt: requests with ``n`` (see `sample`), stored when they return."""
        prompt = self.prompts[indices[0]]
        endpoint = self.endpoint
        prepared: Prepared | None = None
        counted: int | None = None
        resends = Resends()
        try:
            prepared = prepare(endpoint.served, prompt.messages, prompt.prefill, prompt.max_tokens)
        except PromptTooLong as exc:
            result: list[Completion] | str = str(exc)
            counted = exc.prompt_tokens
        if prepared is not None:
            ready = prepared
            result = sample_or_fault(
                lambda s: endpoint.send(ready, s, resends),
                replace(self.sampling, seed=seed_of(self.sampling, indices[0])),
                [self.temperatures[index] for index in indices],
                endpoint.secrets,
                resends,
            )
        outcomes = (
            [Outcome(completion, None) for completion in result]
            if not isinstance(result, str)
            else [Outcome(None, result) for _ in indices]
        )
        self.store_outcomes(indices, prepared, outcomes, counted=counted, retries=resends.count)

    def run_stream(self, index: int, prepared: Prepared | None, too_long: PromptTooLong | None) -> None:
        """One streamed thinker, stopped below the threshold or once the wave's consensus is reached; stored
        when it ends, with its place in the finishing order."""
        assert self.streaming is not None and self.wave is not None
        streaming, endpoint, wave = self.streaming, self.endpoint, self.wave
        sampling = replace(self.sampling, temperature=self.temperatures[index], n=1)
        sampling = replace(sampling, seed=seed_of(self.sampling, index))
        outcome = Outcome(None, str(too_long) if too_long is not None else None)
        resends = Resends()
        stopped = False
        if prepared is not None and wave.reached.is_set():
            outcome = Outcome(unsent(sampling.temperature), None)
        elif prepared is not None:
            ready = prepared
            k = int(self.state["params"].get("top_logprobs") or 0) or None

            def attempt() -> Outcome:
                def on(url: str) -> Outcome:
                    nonlocal stopped
                    monitor = WindowMonitor(streaming.threshold, streaming.window, k)  # fresh for each attempt
                    completion = send_stream(
                        endpoint.served,
                        ready,
                        sampling,
                        url,
                        timeout=endpoint.timeout,
                        max_retries=endpoint.retries,
                        on_position=wave.hook(monitor),
                    )
                    stopped = monitor.stopped_at is not None
                    return Outcome(completion, None, monitor.confidences)

                return endpoint.pool.call(lambda url: endpoint.on(url, lambda: on(url), resends))

            result = with_faults(attempt, endpoint.secrets, resends)
            outcome = result if isinstance(result, Outcome) else Outcome(None, result)
        completion = outcome.completion
        text = text_of(prepared, completion) if prepared is not None and completion is not None else ""
        _, found = self.trace_measures(outcome)
        reason, order = wave.settle(
            self.ids[index], completion, outcome.error, text, found.as_dict() if found else None, stopped
        )
        outcome = replace(outcome, stop_reason=reason, finish_order=order)
        counted = too_long.prompt_tokens if too_long is not None else None
        self.store_outcomes([index], prepared, [outcome], counted=counted, retries=resends.count)


def store_unrendered(state: State, store: RolloutStore, ids: list[str], count: int, reason: str) -> None:
    """Rollouts (of an iteration of `count`) whose prompt could not be built: stored as failed, with the
    reason; nothing is sent."""
    for rid in ids:
        store.add_rollout(
            RolloutRow(
                id=rid,
                run_id=state["run_id"],
                thread_id=state["thread_id"],
                iteration=state.get("iteration", 0),
                index=int(rid.rsplit(":", 1)[1]),
                created_at=utcnow(),
                prompt_json="[]",
                content="",
                finish_reason="error",
                error=reason,
            ),
            count,
        )


@guarded
def solve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    params = state["params"]
    iteration = state.get("iteration", 0)
    store = store_of(runtime)
    count = get_strategy(params["strategy"]).thinker_count(state)
    low, high = state["temperature_range"]  # set by `prepare`, adapted by `distill_knowledge`
    temperatures = spread(low, high, count)
    ids = [rollout_id(state["run_id"], iteration, index) for index in range(count)]
    stored = store.stored_rollouts(ids)
    missing = [index for index, rid in enumerate(ids) if rid not in stored]
    if not missing:
        return {"pending_rollouts": ids}
    strategy, step, served = step_of(state, runtime)
    if iteration == 0:
        store.update_run(state["run_id"], served_json=json.dumps(served.info().as_dict()))
    try:
        prompts = strategy.build_prompts(step, count)
    except PromptSetError as exc:  # e.g. a model's text made a template pass its bounds
        reason = f"the prompt could not be rendered: {exc}"
        store_unrendered(state, store, [ids[index] for index in missing], count, reason)
        return {"pending_rollouts": ids}
    if len(prompts) != count:
        raise RuntimeError(f"strategy {strategy.name} built {len(prompts)} prompts for {count} thinkers")
    streaming = strategy.streaming(step)
    top = int(params.get("top_logprobs") or 0)
    sampling = sampling_of(
        params,
        prompts[0].max_tokens,
        logprobs=params["thinkers"] > 1 or streaming is not None,
        top_logprobs=top,
        seed_offset=SEED_STRIDE * iteration,
    )
    wave = open_wave(store, strategy, step, streaming, ids) if streaming is not None else None
    work = Iteration(state, ids, prompts, temperatures, sampling, streaming, endpoint_of(runtime, served), store, wave)
    # thinkers whose prompts are the same request share requests (and one count of the prompt's tokens)
    groups: list[list[int]] = []
    for index in missing:
        group = next((g for g in groups if prompts[g[0]].same_request(prompts[index])), None)
        if group is None:
            groups.append([index])
        else:
            group.append(index)
    tasks: list[Callable[[], None]] = []
    for group in groups:
        batch = replace(work, sampling=replace(sampling, max_tokens=prompts[group[0]].max_tokens))
        if streaming is None:
            tasks.append(partial(batch.run_batch, group))
            continue
        prompt = prompts[group[0]]
        prepared: Prepared | None = None
        too_long: PromptTooLong | None = None
        try:
            prepared = prepare(served, prompt.messages, prompt.prefill, prompt.max_tokens)
            note_inactive_filter(prepared, streaming, params)
        except PromptTooLong as exc:
            too_long = exc
        for index in group:
            tasks.append(partial(batch.run_stream, index, prepared, too_long))
    # llama.cpp's server stops a running stream when another request arrives: stream one at a time there
    one_at_a_time = streaming is not None and served.info().server == "llama.cpp"
    if len(tasks) == 1 or one_at_a_time:
        for task in tasks:
            task()
    else:
        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            futures = [pool.submit(task) for task in tasks]
            for future in futures:
                future.result()  # the first endpoint error stops the run; finished requests are stored
    return {"pending_rollouts": ids}
