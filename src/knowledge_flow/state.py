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


class KnowledgeItem(TypedDict):
    """One entry of the knowledge record (for knowledge-flow: one Wrong Answer List item)."""

    wrong_answer: str
    text: str
    iteration: int


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class CurrentRollout(TypedDict):
    """What `extract_answer` read from the latest rollout; consumed by `distill_knowledge`."""

    rollout_id: str
    answer: str | None
    summary: str | None
    error_report: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


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


class State(InputState, total=False):
    """The full graph state."""

    run_id: str
    thread_id: str
    params: RunParams
    iteration: int
    """Rollouts completed so far."""
    pending_rollout: str | None
    """Id of the rollout `solve` just stored, for `extract_answer`."""
    current: CurrentRollout | None
    reference: str | None
    """The latest rollout's summary, shown as the reference solution."""
    reference_answer: str | None
    answers: list[str | None]
    """One answer per completed rollout, in order (None where none was found)."""
    knowledge: list[KnowledgeItem]
    """The full knowledge record, oldest first; what the prompt shows is derived from it."""
    rollout_ids: list[str]
    usage: Usage
    status: RunStatus
    final_answer: str | None


class OutputState(TypedDict):
    run_id: NotRequired[str]
    status: NotRequired[RunStatus]
    final_answer: NotRequired[str | None]
    answers: NotRequired[list[str | None]]
    knowledge: NotRequired[list[KnowledgeItem]]
    iteration: NotRequired[int]
    usage: NotRequired[Usage]
