"""`markovian`: keep only the tail of the trace and continue it (the Markovian thinking baseline).

No knowledge list and no output format. Rollout k > 0 sends the problem, then as the assistant's message the
tail of the trace so far (within 45% of max new tokens, cut at a sentence boundary) followed by "Wait, just
keep thinking."; the server continues that message (vLLM `continue_final_message`) for at most half of max
new tokens. The answer is read from the new continuation only.
"""

from __future__ import annotations

from collections.abc import Sequence

from knowledge_flow import prompts
from knowledge_flow.sentences import tail_sentences
from knowledge_flow.state import CurrentRollout, RunParams, State
from knowledge_flow.strategies.base import BaseStrategy, Distilled, History, Message

TAIL_FRACTION = 0.45
CONTINUATION_FRACTION = 0.5


class Markovian(BaseStrategy):
    name = "markovian"

    def max_tokens(self, params: RunParams) -> int:
        return max(1, int(params["max_new_tokens"] * CONTINUATION_FRACTION))

    def text_to_parse(self, messages: Sequence[Message], content: str) -> str:
        return content

    def build_messages(self, state: State, history: History) -> list[Message]:
        user: Message = {"role": "user", "content": prompts.markovian_user(state["problem"])}
        iteration = state.get("iteration", 0)
        previous = history.best_rollout_id(state["run_id"], iteration - 1) if iteration else None
        stored = history.rollout_text(previous) if previous else None
        if stored is None:
            return [user]
        messages, content = stored
        prefix = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
        trace = prefix + content
        budget = int(state["params"]["max_new_tokens"] * TAIL_FRACTION)
        return [user, {"role": "assistant", "content": prompts.markovian_prefix(tail_sentences(trace, budget))}]

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        _, answer, changed = self.reference_update(state, best, update_reference)
        return Distilled([], None, answer, changed)
