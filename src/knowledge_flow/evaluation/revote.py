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
from typing import Any

from knowledge_flow.persistence.store import RolloutRow, RolloutStore
from knowledge_flow.records import AnswerType, TraceVote
from knowledge_flow.strategies.policies import MissingTraces, final_answer
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


def stored_votes(store: RolloutStore, run_ids: Sequence[str]) -> dict[str, list[TraceVote]]:
    """Per run, its traces as votes with their stored answers, in wave and thinker order."""
    rows = store.runs_rollouts(run_ids, only=VOTE_COLUMNS)
    return {run_id: [vote_of(row, row.answer) for row in found] for run_id, found in rows.items()}


def reread_votes(store: RolloutStore, run_id: str, rule: str, answer_type: AnswerType, family: str) -> list[TraceVote]:
    """One run's traces as votes, each answer read again from its stored output by `rule`."""
    return [
        vote_of(row, regrade_answer(rule, row.text_to_parse(), row.reasoning, answer_type, family))
        for row in store.rollouts(run_id)
    ]


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
    rule: str, answers: Sequence[str | None], votes: Sequence[TraceVote], answer_type: AnswerType
) -> list[str | None]:
    """The final answer after each wave: the rule's vote over the traces of waves 0..k."""
    return [
        final_answer(rule, answers[: k + 1], answer_type, [v for v in votes if v["iteration"] <= k])
        for k in range(len(answers))
    ]


def item_votes(votes: dict[str, list[TraceVote]], item: Any, rule: str) -> list[TraceVote]:
    """A finished evaluation item's votes, checked complete (see `check_complete`)."""
    found = votes.get(item.run_id or "", [])
    label = f"problem {item.problem_id} (thread {item.thread_id})"
    check_complete(label, len(item.answers), found, rule)
    return found


__all__ = [
    "MissingTraces",
    "check_complete",
    "finals_after_waves",
    "item_votes",
    "reread_votes",
    "stored_votes",
]
