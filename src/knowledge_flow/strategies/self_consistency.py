"""`self-consistency`: independent rollouts of the rollout-0 prompt; the final answer is the majority vote.

The compute-matched baseline: the same number of rollouts and tokens as a Knowledge Flow run, no knowledge
passed between them. It sends the prompt set's top-level `first` template at every rollout, with the
top-level rules' budget. Its default final-answer rule is ``majority:all``.
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow.records import Candidate
from knowledge_flow.strategies.base import BaseStrategy, Distilled, RolloutPrompt, Step
from knowledge_flow.strategies.knowledge_flow import SPEC


class SelfConsistency(BaseStrategy):
    name = "self-consistency"
    spec = SPEC
    final_answer_rule = "majority:all"

    def build_prompt(self, step: Step) -> RolloutPrompt:
        return self.render(step, "first", self.variables(step), step.rules.max_tokens_fraction)

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        _, answer, changed = self.reference_update(step.state, best, update_reference)
        return Distilled([], None, answer, changed)
