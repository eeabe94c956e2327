"""What an iteration's selection chooses among, and the pieces of a call that makes the choice (TRT's verifier
and manager, or any strategy whose selection asks the model):

- `with_previous`: the candidates: the previous best first where the run carries one (trt from round 2 on:
  `State.best`, marked ``previous_best``), then the iteration's rollouts;
- `eligible`: those a vote or a call may choose (an answer, no failure, not kept out of votes);
- `candidate_views`: the candidates as templates see them, numbered from 1 in the order given, with the
  variables ``number``, ``thinker`` (1-based), ``answer``, ``summary``, ``text`` (the final text, after any
  reasoning, read from the rollout store), ``previous_best``, ``key_technique``, ``what_to_try`` and
  ``outcome`` (``previous best`` or ``candidate``); a template may use any of them, or none;
- `read_choice`: the candidate a JSON reply chose: its ``selected_solution_id`` (1-based), else the first
  number of its ``ranking``; None when neither names a shown candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from knowledge_flow.records import AnswerType, Candidate, ThinkerStrategy
from knowledge_flow.strategies.base import RolloutReader
from knowledge_flow.strategies.thinkers import can_vote
from knowledge_flow.text.json_replies import read_number, reply_object
from knowledge_flow.text.parsing import final_text

CHOICE_KEYS = ("selected_solution_id", "ranking")


def with_previous(best: Candidate | None, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The iteration's candidates: `best` (the previous selection, when there is one) first, then the rollouts."""
    if best is None:
        return list(candidates)
    return [Candidate(**{**best, "previous_best": True}), *candidates]


def eligible(candidates: Sequence[Candidate], answer_type: AnswerType) -> list[Candidate]:
    """The candidates a vote counts and a call may choose: an answer, no failure, not kept out of votes."""
    return [c for c in candidates if can_vote(c, answer_type)]


def field_of(strategy: ThinkerStrategy | None, key: str) -> str | None:
    return None if strategy is None else str(strategy.get(key, "")) or None


def candidate_text(reader: RolloutReader, rollout_id: str) -> str:
    """A rollout's final text as stored (its reasoning when the final text is empty); "" when it is not stored."""
    stored = reader.stored_texts(rollout_id)
    return "" if stored is None else final_text(stored.content, stored.reasoning)


def candidate_views(candidates: Sequence[Candidate], reader: RolloutReader) -> list[dict[str, Any]]:
    """The candidates as a selection prompt shows them, numbered from 1 in the given order."""
    return [
        {
            "number": number,
            "thinker": candidate.get("thinker", number - 1) + 1,
            "answer": candidate["answer"],
            "summary": candidate["summary"],
            "text": candidate_text(reader, candidate["rollout_id"]),
            "previous_best": bool(candidate.get("previous_best")),
            "key_technique": field_of(candidate.get("strategy"), "key_technique"),
            "what_to_try": field_of(candidate.get("strategy"), "what_to_try"),
            "outcome": "previous best" if candidate.get("previous_best") else "candidate",
        }
        for number, candidate in enumerate(candidates, start=1)
    ]


def read_choice(reply: dict[str, Any] | None, count: int) -> int | None:
    """The 1-based number of the candidate `reply` (a parsed JSON object) chose among `count`, or None."""
    if reply is None:
        return None
    chosen = read_number(reply.get("selected_solution_id"))
    ranking = reply.get("ranking")
    if chosen is None and isinstance(ranking, list) and ranking:
        chosen = read_number(ranking[0])
    return chosen if chosen is not None and 1 <= chosen <= count else None


def choice_in(text: str, count: int) -> int | None:
    """The candidate a reply's text chose (its last JSON object with a choice), or None."""
    return read_choice(reply_object(text, CHOICE_KEYS), count)
