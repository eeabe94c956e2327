"""A prompt set rendered on sample states before a run starts, so that a template that cannot be rendered (an
attribute a variable lacks, a bound of `knowledge_flow.prompts.bounds` passed, a recursive macro) is refused
with one line before anything is sent or written.

The strategy builds every prompt it can send, exactly as a run does: the first iteration's, a later one's
(a reference, answers that agree, a knowledge list with a wrong answer, a positive item and a reflection's
lesson, a past round), and for strategies with a reflect step the planning, reflection and verifier prompts;
then any template of the table no sample reached. What the run itself later renders may still differ (the
model's texts): a failure then is stored as a failed rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from knowledge_flow.prompts import PromptTable
from knowledge_flow.records import Candidate, KnowledgeItem, RunParams, StoredRollout, StrategyRound
from knowledge_flow.strategies.base import Reflecting, RoundRollout, Step, Strategy
from knowledge_flow.text.tokens import ESTIMATE

if TYPE_CHECKING:
    from knowledge_flow.state import State

SAMPLE_PROBLEM = "Find the number of positive integers n below 100 such that n^2 + 1 is divisible by 5."
SAMPLE_SUMMARY = ": The residues of n modulo 5 whose square is 4 are 2 and 3, so 40 of the numbers work. 40"
SAMPLE_REPORT = ": The Answer cannot be 39, because 99 is not the last number counted. The correct approach is ..."
LESSON = {
    "pattern": "Counting residues",
    "when_to_use": ["a divisibility condition on a polynomial"],
    "key_insight": "Reduce modulo the divisor first.",
    "observed_mistakes": ["an off-by-one at the end of the range"],
}


class _SampleHistory:
    """The stored rollouts of the sample run: one earlier rollout, with a reasoning and an answer."""

    def stored_texts(self, rollout_id: str) -> StoredRollout | None:
        text = f"Step by step, the residues are 0 to 4.\n[Summary]{SAMPLE_SUMMARY}\n[Answer]: \\boxed{{40}}"
        return StoredRollout([{"role": "user", "content": SAMPLE_PROBLEM}], None, text, "Thinking about residues.")

    def best_rollout_id(self, run_id: str, iteration: int) -> str | None:
        return f"{run_id}:{iteration}:0"


def sample_states(params: RunParams, problem: str) -> list[State]:
    """A first iteration's state and a later one's (its reference, knowledge, history and strategies)."""
    knowledge = [
        KnowledgeItem(wrong_answer="39", text=SAMPLE_REPORT, iteration=1, tokens=24),
        KnowledgeItem(wrong_answer=None, text="TRIGGER: a divisibility condition. STEPS: ...", iteration=2, tokens=12),
        KnowledgeItem(wrong_answer=None, text="Pattern: Counting residues", iteration=2, tokens=8, lesson=LESSON),
    ]
    entry = {
        "thinker": 0,
        "rollout_id": "sample:1:0",
        "key_technique": "Residues",
        "what_to_try": "Count by residue class",
        "answer": "39",
        "outcome": "selected",
    }
    history = [StrategyRound(round=1, entries=[entry], selected_answer="39", agreement=1.0, rule="vote")]  # type: ignore[list-item]
    first: dict[str, Any] = {
        "problem": problem,
        "run_id": "sample",
        "thread_id": "sample",
        "params": params,
        "iteration": 0,
        "reference": None,
        "reference_answer": None,
        "answers": [],
        "knowledge": [],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
    }
    later = {
        **first,
        "iteration": 3,
        "reference": SAMPLE_SUMMARY,
        "reference_answer": "40",
        "answers": ["40", "40", "40"],
        "knowledge": knowledge,
        "thinker_strategies": [
            {"key_technique": "Residues", "what_to_try": "Count by residue class"}
            for _ in range(max(1, params["thinkers"]))
        ],
        "strategy_history": history,
    }
    second = {**later, "iteration": 1, "answers": ["40"]}
    return [cast("State", first), cast("State", second), cast("State", later)]


@dataclass(frozen=True)
class _Recording(PromptTable):
    """A table that notes which templates were rendered, and with what."""

    rendered: dict[str, dict[str, Any]] = field(default_factory=dict)

    def render(self, key: str, **variables: Any) -> str:
        text = super().render(key, **variables)
        self.rendered[key] = variables
        return text


def rehearse(strategy: Strategy, table: PromptTable, params: RunParams, problem: str | None = None) -> None:
    """Render every prompt `strategy` can build from `table` on the sample states, then every template of the
    table the samples did not reach whose variables the strategy provides (with those of the last render:
    e.g. ``later`` where a set's guard sent the ``first`` prompt); `PromptSetError` (with the template and
    the reason) when one cannot be rendered."""
    history = _SampleHistory()
    recording = _Recording(table.set_name, table.label, table.templates, table.rules, table.uses)
    for state in sample_states(params, problem or SAMPLE_PROBLEM):
        step = Step(state, recording, ESTIMATE, history)
        strategy.build_prompts(step, strategy.thinker_count(state))
        if strategy.reflects:
            reflecting = cast(Reflecting, strategy)
            rounds = [RoundRollout(0, "sample:1:0", "39", SAMPLE_SUMMARY, None, "selected", None)]
            reflecting.reflect_prompt(step, "plan", [])
            reflecting.reflect_prompt(step, "reflect", rounds)
            reflecting.verify_prompt(step, [sample_candidate(0), sample_candidate(1)])
    last = next(reversed(recording.rendered.values()), {})
    for key in recording.templates:
        if key not in recording.rendered and recording.uses.get(key, frozenset()) <= set(last):
            table.render(key, **last)


def sample_candidate(thinker: int) -> Candidate:
    return Candidate(
        rollout_id=f"sample:2:{thinker}",
        answer="40",
        summary=SAMPLE_SUMMARY,
        error_report=None,
        extras={},
        finish_reason="stop",
        prompt_tokens=0,
        completion_tokens=0,
        temperature=0.6,
        confidence=None,
        error=None,
        thinker=thinker,
    )
