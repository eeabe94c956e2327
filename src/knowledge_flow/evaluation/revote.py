"""Re-votes from stored traces, for the final-answer rules that vote over every trace (``conf-vote:...``,
``majority-traces``): what `kflow report` and `--compare` grade.

- The answer after wave (iteration) k is the rule's vote over the counted traces of waves 0..k, counted as the
  run counted them (not failed, not stopped below the threshold, not cancelled at consensus, not below the
  threshold), each with its DeepConf measures as stored.
- With an answer rule other than ``default`` (`knowledge_flow.text.answer_rules`), every trace's answer is
  read again from its stored text first (no request is sent).
- A finished problem whose traces are not in the store (a wave without any) cannot be re-voted: `MissingTraces`
  names it. No other rule is put in its place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from knowledge_flow.persistence.store import RolloutRow, RolloutStore
from knowledge_flow.records import AnswerType, TraceVote
from knowledge_flow.strategies.genselect import pool_traces
from knowledge_flow.strategies.policies import MissingTraces, final_answer, selects_final
from knowledge_flow.text.answer_rules import regrade_answer

#: What a vote needs of a stored trace (its texts are not read).
VOTE_COLUMNS = (
    RolloutRow.id,
    RolloutRow.run_id,
    RolloutRow.iteration,
    RolloutRow.index,
    RolloutRow.answer,
    RolloutRow.error,
    RolloutRow.stop_reason,
    RolloutRow.conf_tokens,
    RolloutRow.conf_mean,
    RolloutRow.conf_lowest,
    RolloutRow.conf_bottom10,
    RolloutRow.conf_tail,
)


def vote_of(row: RolloutRow, answer: str | None) -> TraceVote:
    """A stored trace as a vote (`answer`: as stored, or read again)."""
    return TraceVote(
        rollout_id=row.id,
        iteration=row.iteration,
        answer=answer,
        measures=row.measures,
        counted=row.error is None and row.stop_reason is None,
    )


def trace_answers(
    store: RolloutStore,
    run_ids: Sequence[str],
    rule: str = "default",
    answer_type: AnswerType = "integer",
    family: str = "instruct",
) -> dict[str, list[tuple[RolloutRow, str | None]]]:
    """Per run, its traces in wave and thinker order, each with its answer: as stored (`rule` ``default``; the
    texts are not read), or read again from its stored output by `rule`."""
    if rule == "default":
        rows = store.runs_rollouts(run_ids, only=VOTE_COLUMNS)
        return {run_id: [(row, row.answer) for row in found] for run_id, found in rows.items()}
    return {
        run_id: [
            (row, regrade_answer(rule, row.text_to_parse(), row.reasoning, answer_type, family))
            for row in store.rollouts(run_id)
        ]
        for run_id in run_ids
    }


def stored_votes(store: RolloutStore, run_ids: Sequence[str]) -> dict[str, list[TraceVote]]:
    """Per run, its traces as votes with their stored answers, in wave and thinker order."""
    return {run_id: [vote_of(*pair) for pair in found] for run_id, found in trace_answers(store, run_ids).items()}


def reread_votes(store: RolloutStore, run_id: str, rule: str, answer_type: AnswerType, family: str) -> list[TraceVote]:
    """One run's traces as votes, each answer read again from its stored output by `rule`."""
    return [vote_of(*pair) for pair in trace_answers(store, [run_id], rule, answer_type, family)[run_id]]


def check_complete(label: str, waves: int, votes: Iterable[TraceVote], rule: str) -> None:
    """Refuse a problem whose stored traces miss a wave it ran (its re-vote would count other traces)."""
    present = {vote["iteration"] for vote in votes}
    missing = [k for k in range(waves) if k not in present]
    if missing:
        shown = ", ".join(str(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MissingTraces(
            f"{label}: the final-answer rule {rule} votes over every trace, and the store has none for "
            f"iteration(s) {shown}; the answer after each iteration cannot be computed again"
        )


def finals_after_waves(
    rule: str,
    answers: Sequence[str | None],
    votes: Sequence[TraceVote],
    answer_type: AnswerType,
    pool: Literal["all", "last"] = "all",
) -> list[str | None]:
    """The final answer after each wave: the rule's vote over the traces of waves 0..k (``genselect``: its
    fallback, the plurality of its pool after wave k, which is wave k alone for a strategy whose pool is the
    last population)."""
    scope = pool if selects_final(rule) else "all"
    return [
        final_answer(rule, answers[: k + 1], answer_type, pool_traces(votes, scope, k)) for k in range(len(answers))
    ]


__all__ = [
    "MissingTraces",
    "check_complete",
    "finals_after_waves",
    "reread_votes",
    "stored_votes",
    "trace_answers",
]
