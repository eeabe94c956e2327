"""`markovian`: keep only the tail of the trace and continue it (the Markovian thinking baseline).

No knowledge list and no output format. The trace accumulates: rollout 0's generation (reasoning included),
then at each later rollout the kept text, the nudge and the new generation. Rollout k > 0 sends the problem,
then as an assistant turn the prompt set's `continuation` template (the kept tail of the trace, at most
`tail_fraction` of max_new_tokens in the served model's tokens, cut at a sentence boundary, and a nudge to
keep thinking); the model answers in a new assistant turn. Budgets: `first_max_tokens_fraction` of
max_new_tokens for rollout 0, `later_max_tokens_fraction` after. The answer is read from the new generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import Candidate, StoredRollout
from knowledge_flow.strategies.base import BaseStrategy, Distilled, RolloutPrompt, Rules, Step
from knowledge_flow.text.sentences import tail_sentences


class MarkovianRules(Rules):
    tail_fraction: float = Field(0.45, gt=0.0, le=1.0, description="Kept tail, as a share of max_new_tokens.")
    first_max_tokens_fraction: float = Field(0.9, gt=0.0, le=1.0, description="Rollout 0's budget share.")
    later_max_tokens_fraction: float = Field(0.5, gt=0.0, le=1.0, description="Later rollouts' budget share.")


SPEC = PromptSpec(
    table="markovian",
    required=("first", "continuation"),
    optional=("system",),
    variables=frozenset({"problem", "answer_slot", "iteration", "tail"}),
    rules=MarkovianRules,
)


def trace_of(stored: StoredRollout) -> str:
    """The trace up to and including a rollout: the assistant text it continued, then its generation."""
    before = stored.messages[-1]["content"] if stored.messages and stored.messages[-1]["role"] == "assistant" else ""
    generation = "\n\n".join(part for part in (stored.reasoning, stored.content) if part)
    return before + generation


class Markovian(BaseStrategy):
    name = "markovian"
    spec = SPEC

    def variables(self, step: Step) -> dict[str, Any]:
        return {
            "problem": step.state["problem"],
            "answer_slot": super().variables(step)["answer_slot"],
            "iteration": step.iteration,
        }

    def build_prompt(self, step: Step) -> RolloutPrompt:
        rules = step.rules
        variables = self.variables(step)
        first = self.render(step, "first", {**variables, "tail": ""}, rules.first_max_tokens_fraction)
        iteration = step.iteration
        previous = step.history.best_rollout_id(step.state["run_id"], iteration - 1) if iteration else None
        stored = step.history.stored_texts(previous) if previous else None
        if stored is None:
            return RolloutPrompt(first.messages, first.max_tokens)
        budget = int(step.params["max_new_tokens"] * rules.tail_fraction)
        tail = tail_sentences(trace_of(stored), budget, step.tokens)
        continuation = step.table.render("continuation", **variables, tail=tail)
        return RolloutPrompt(
            [*first.messages, {"role": "assistant", "content": continuation}],
            self.budget(step, rules.later_max_tokens_fraction),
        )

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        _, answer, changed = self.reference_update(step.state, best, update_reference)
        return Distilled([], None, answer, changed)
