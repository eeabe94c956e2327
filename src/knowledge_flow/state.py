"""The typed, JSON-native graph state.

The state holds small values only: parameters, answers, the knowledge record, the current reference
solution and rollout ids. Full prompts and model outputs live in the rollout store
(:mod:`knowledge_flow.persistence.store`), so each checkpoint stays small.

The lists that grow with every iteration (answers, changed_with_report, the knowledge record) are LangGraph delta
channels: a node writes only the new items (or an `Overwrite` when it replaces the list), checkpoints do
not copy them, and LangGraph rebuilds them from the stored writes. Each item is stored once, so the
database grows linearly with the number of rollouts, not quadratically.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Annotated, Any, NotRequired, Required, TypeVar

from langgraph.channels import DeltaChannel, EphemeralValue
from pydantic import Field

# pydantic (which LangGraph uses for the input and output JSON schemas) needs typing_extensions' TypedDict
# before Python 3.12.
from typing_extensions import TypedDict

from knowledge_flow.options import RunOptions
from knowledge_flow.records import (
    AnswerType,
    Candidate,
    ConfidenceScore,
    HistoryEntry,
    KnowledgeItem,
    ModelFamily,
    Reflection,
    RunParams,
    RunStatus,
    Selection,
    SelectRule,
    StrategyRound,
    ThinkerStrategy,
    TraceVote,
    Usage,
    Verdict,
)

__all__ = [
    "AnswerType",
    "Candidate",
    "ConfidenceScore",
    "HistoryEntry",
    "InputState",
    "KnowledgeItem",
    "ModelFamily",
    "OutputState",
    "PrepareInput",
    "Reflection",
    "RunParams",
    "RunStatus",
    "SelectRule",
    "Selection",
    "State",
    "StrategyRound",
    "ThinkerStrategy",
    "TraceVote",
    "Usage",
    "Verdict",
]

T = TypeVar("T")


def append(current: list[T], batches: Sequence[list[T]]) -> list[T]:
    """Reducer of the append-only lists: each write is a list of new items (batching-invariant, as delta
    channels require: applying two batches one after the other equals applying them together)."""
    return [*current, *chain.from_iterable(batches)]


def _input_schema() -> Any:
    """The graph's input: `problem` and every run option (`knowledge_flow.options.RunOptions`), with its
    description and default (what Studio's input form shows).

    The options are read once, by the `prepare` node (it validates them into `params`): they are ephemeral
    channels, empty after that step, so checkpoints do not carry them and a later run on the same thread
    never inherits them by accident.
    """
    from knowledge_flow.strategies import default_text

    fields: dict[str, Any] = {"problem": Required[Annotated[str, Field(description="The problem to solve.")]]}
    for name, info in RunOptions.model_fields.items():
        by_strategy = default_text(name)
        description = f"{info.description} ({by_strategy})" if by_strategy else info.description
        described = Field(description=description, json_schema_extra={"default": info.default})
        annotation: Any = info.annotation
        fields[name] = Annotated[annotation | None, described, EphemeralValue]
    return TypedDict("InputState", fields, total=False)  # type: ignore[operator]


InputState: Any = _input_schema()


def _prepare_input() -> Any:
    """What `prepare` reads: the input, and whether the thread held a run before (its id)."""
    fields = dict(InputState.__annotations__)
    fields["run_id"] = NotRequired[str]
    return TypedDict("PrepareInput", fields, total=False)  # type: ignore[operator]


PrepareInput: Any = _prepare_input()


class State(TypedDict, total=False):
    """The full graph state."""

    problem: str

    run_id: str
    thread_id: str
    params: RunParams
    iteration: int
    """Rollouts completed so far."""
    pending_rollouts: list[str]
    """Ids of the rollouts (one per thinker) `solve` just stored, for `extract_answer`."""
    candidates: list[Candidate]
    """The parsed rollouts of the current iteration, for `distill_knowledge`."""
    temperature_range: list[float]
    """[low, high] of the thinkers' temperatures for the next iteration."""
    reference: str | None
    """The latest rollout's summary, shown as the reference solution."""
    reference_answer: str | None
    answers: Annotated[list[str | None], DeltaChannel(append)]
    """One answer per completed iteration, in order (None where none was found). Write new items only."""
    changed_with_report: Annotated[list[bool], DeltaChannel(append)]
    """Per iteration: whether the chosen rollout wrote an error report (a changed answer). Write new items
    only."""
    knowledge: Annotated[list[KnowledgeItem], DeltaChannel(append)]
    """The full knowledge record, oldest first; what the prompt shows is derived from it. Write new items,
    or an `Overwrite` with the whole record when a strategy replaces or drops items."""
    usage: Usage
    status: RunStatus
    final_answer: str | None
    stopped_early: bool
    failed_streak: int
    """Consecutive iterations in which every rollout failed."""
    selection: Selection | None
    """How the last iteration's answer was chosen."""
    verdict: Verdict | None
    """The verifier's choice for the current iteration (select rule `verifier`)."""
    traces: Annotated[list[TraceVote], DeltaChannel(append)]
    """Every rollout as a trace of the confidence vote (only runs that vote by confidence or stop on
    consensus keep it). Write new items only."""
    confidence_threshold: float | None
    """deepconf: the online threshold set by the warm-up wave (None before it, or without measures)."""
    thinker_strategies: list[ThinkerStrategy]
    """trt: the approaches of the next round, one per thinker (fewer or none when planning failed)."""
    strategy_history: list[StrategyRound]
    """trt: the last rounds (at most the prompt set's `history_rounds`)."""
    reflection: Reflection | None
    """trt: the last planning, reflection or manager call's outcome."""
    best: Candidate | None
    """trt: the selected candidate so far (its answer is the reference answer); from round 2 on it is a
    candidate of every select rule, carried as it was parsed."""


class OutputState(TypedDict):
    """What a run returns (and what Studio streams as each step's update)."""

    run_id: NotRequired[str]
    pending_rollouts: NotRequired[list[str]]
    """The ids of the rollouts `solve` just stored (the rollout store has their texts)."""
    candidates: NotRequired[list[Candidate]]
    """What `extract_answer` read from them: answer, summary, error report, tokens."""
    status: NotRequired[RunStatus]
    final_answer: NotRequired[str | None]
    answers: NotRequired[list[str | None]]
    knowledge: NotRequired[list[KnowledgeItem]]
    iteration: NotRequired[int]
    usage: NotRequired[Usage]
    stopped_early: NotRequired[bool]
