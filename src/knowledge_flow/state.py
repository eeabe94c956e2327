"""The typed, JSON-native graph state.

The state holds small values only: parameters, answers, the knowledge record, the current reference
solution and rollout ids. Full prompts and model outputs live in the rollout store
(:mod:`knowledge_flow.persistence.store`), so each checkpoint stays small and the database grows linearly
with the number of rollouts.
"""

from __future__ import annotations

from typing import Literal, NotRequired, Required, TypedDict

AnswerType = Literal["integer", "latex", "text"]
RunStatus = Literal["running", "done", "failed"]


ModelFamily = Literal["gpt-oss", "qwen3-thinking", "instruct"]


class RunParams(TypedDict):
    """Everything a run needs to continue after a crash (runtime context is not checkpointed)."""

    model: str
    iterations: int
    temperature: float
    top_p: float
    max_new_tokens: int
    strategy: str
    answer_type: AnswerType
    knowledge_budget_tokens: int
    prefill: str | None
    prompt_version: str
    model_family: ModelFamily
    reasoning_effort: str | None
    stop_policy: str
    """`fixed` (the iteration budget) or `stable:K`."""
    final_answer_rule: str
    """`last` or `majority:W` (W an integer or `all`)."""
    thinkers: int
    topk_thinkers: int
    min_temperature: float
    max_temperature: float
    diversity_weight: float
    dynamic_temperature: bool
    uncertainty_threshold: float | None
    avoid_budget_tokens: int
    """Regeneration: token budget of the Things to Avoid list."""


class KnowledgeItem(TypedDict):
    """One entry of the knowledge record.

    knowledge-flow: a Wrong Answer List item (`wrong_answer` is the answer it refutes); regeneration: the
    current Things to Avoid list; positive-knowledge: one Experimental Knowledge item (`wrong_answer` None).
    """

    wrong_answer: str | None
    text: str
    iteration: int


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class CurrentRollout(TypedDict):
    """What `extract_answer` read from one rollout (one thinker); consumed by `distill_knowledge`."""

    rollout_id: str
    answer: str | None
    summary: str | None
    error_report: str | None
    extras: dict[str, str]
    """Strategy-specific sections (e.g. Things to Avoid, Adding?), small texts."""
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    temperature: float
    confidence: float | None
    """Mean token log-probability, when the server returned log-probabilities."""
    error: str | None
    """Why the rollout failed (no usable response after retries); None when it succeeded."""


class InputState(TypedDict, total=False):
    """What a caller passes to start a run. Only `problem` is required; the rest default sensibly.

    The optional fields are consumed by the `prepare` node (it resets them), so a later run on the same
    thread never inherits them by accident.
    """

    problem: Required[str]
    model: str | None
    iterations: int | None
    temperature: float | None
    top_p: float | None
    max_new_tokens: int | None
    strategy: str | None
    answer_type: AnswerType | None
    knowledge_budget_tokens: int | None
    prefill: str | None
    model_family: ModelFamily | None
    reasoning_effort: str | None
    stop_policy: str | None
    final_answer_rule: str | None
    thinkers: int | None
    topk_thinkers: int | None
    min_temperature: float | None
    max_temperature: float | None
    diversity_weight: float | None
    dynamic_temperature: bool | None
    uncertainty_threshold: float | None
    avoid_budget_tokens: int | None


class State(InputState, total=False):
    """The full graph state."""

    run_id: str
    thread_id: str
    params: RunParams
    iteration: int
    """Rollouts completed so far."""
    pending_rollouts: list[str]
    """Ids of the rollouts (one per thinker) `solve` just stored, for `extract_answer`."""
    candidates: list[CurrentRollout]
    """The parsed rollouts of the current iteration, for `distill_knowledge`."""
    temperature_range: list[float]
    """[low, high] of the thinkers' temperatures for the next iteration."""
    reference: str | None
    """The latest rollout's summary, shown as the reference solution."""
    reference_answer: str | None
    answers: list[str | None]
    """One answer per completed iteration, in order (None where none was found)."""
    reported: list[bool]
    """Per iteration: whether the chosen rollout wrote an error report (a changed answer)."""
    knowledge: list[KnowledgeItem]
    """The full knowledge record, oldest first; what the prompt shows is derived from it."""
    usage: Usage
    status: RunStatus
    final_answer: str | None
    stopped_early: bool
    failed_streak: int
    """Consecutive iterations in which every rollout failed."""


class OutputState(TypedDict):
    run_id: NotRequired[str]
    status: NotRequired[RunStatus]
    final_answer: NotRequired[str | None]
    answers: NotRequired[list[str | None]]
    knowledge: NotRequired[list[KnowledgeItem]]
    iteration: NotRequired[int]
    usage: NotRequired[Usage]
    stopped_early: NotRequired[bool]
