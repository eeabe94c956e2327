"""`self-consistency`: independent rollouts of the rollout-0 prompt; the final answer is the majority vote.

The compute-matched baseline: the same number of rollouts and tokens as a Knowledge Flow run, no knowledge
passed between them. Its default final-answer rule is ``majority:all``.
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow import prompts
from knowledge_flow.state import CurrentRollout, State
from knowledge_flow.strategies.base import BaseStrategy, Distilled, History, Message


class SelfConsistency(BaseStrategy):
    name = "self-consistency"

    def build_messages(self, state: State, history: History) -> list[Message]:
        text = prompts.first_rollout(state["problem"], state["params"]["answer_type"])
        return self.with_prefill(state, [{"role": "user", "content": text}])

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        _, answer, changed = self.reference_update(state, best, update_reference)
        return Distilled([], None, answer, changed)
