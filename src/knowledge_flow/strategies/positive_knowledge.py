"""`positive-knowledge`: an Experimental Knowledge list the model grows and prunes.

Rules: rollout 0 proposes an item in `[Novel Knowledge to Add to the List]`. From rollout 1 the model solves
without and with the list and answers `[Adding?]` and `[Dropping?]`. The item named in
`[Least Useful to Drop]` ("Experimental Knowledge N", numbered as shown, oldest first) is removed when
`[Dropping?]` says Yes; then the new item is added unless `[Adding?]` says No, if it fits 1024 tokens; at
most 10 items are kept (the oldest goes out).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from knowledge_flow import prompts
from knowledge_flow.knowledge import count_tokens
from knowledge_flow.parsing import is_na
from knowledge_flow.state import CurrentRollout, KnowledgeItem, State
from knowledge_flow.strategies.base import BaseStrategy, Distilled, History, Message

MAX_ITEMS = 10
MAX_ITEM_TOKENS = 1024
ADDING = "Adding?"
DROPPING = "Dropping?"
NOVEL = "Novel Knowledge to Add to the List"
DROP_TARGET = "Least Useful to Drop"
_NUMBER = re.compile(r"(?:experimental\s+knowledge|ek)\s*#?\s*(\d+)", re.IGNORECASE)


def says_yes(text: str | None) -> bool:
    return bool(text) and text.strip().strip("*").lower().startswith("yes")  # type: ignore[union-attr]


def says_no(text: str | None) -> bool:
    return bool(text) and text.strip().strip("*").lower().startswith("no")  # type: ignore[union-attr]


def drop_index(text: str | None) -> int | None:
    match = _NUMBER.search(text or "")
    return int(match.group(1)) if match else None


class PositiveKnowledge(BaseStrategy):
    name = "positive-knowledge"
    section_names: tuple[str, ...] = (
        "Solution without EK",
        ADDING,
        NOVEL,
        "Reason to make this addition",
        DROPPING,
        DROP_TARGET,
        "Why that knowledge should be dropped?",
    )
    state_sections: tuple[str, ...] = (ADDING, NOVEL, DROPPING, DROP_TARGET)

    def visible_knowledge(self, state: State) -> list[KnowledgeItem]:
        return list(state.get("knowledge", []))

    def build_messages(self, state: State, history: History) -> list[Message]:
        text = prompts.positive_rollout(
            state["problem"],
            state.get("iteration", 0),
            state.get("reference"),
            self.visible_knowledge(state),
            state["params"]["answer_type"],
        )
        return self.with_prefill(state, [{"role": "user", "content": text}])

    def distill(
        self, state: State, best: CurrentRollout, kept: Sequence[CurrentRollout], update_reference: bool
    ) -> Distilled:
        reference, answer, changed = self.reference_update(state, best, update_reference)
        items = list(state.get("knowledge", []))
        extras = best["extras"]
        if state.get("iteration", 0) > 0 and says_yes(extras.get(DROPPING)):
            index = drop_index(extras.get(DROP_TARGET))
            if index is not None and 1 <= index <= len(items):
                del items[index - 1]
        novel = extras.get(NOVEL)
        added: list[tuple[str, KnowledgeItem]] = []
        if novel and not is_na(novel) and not says_no(extras.get(ADDING)) and count_tokens(novel) <= MAX_ITEM_TOKENS:
            item = KnowledgeItem(wrong_answer=None, text=novel.strip(), iteration=state.get("iteration", 0))
            items.append(item)
            added.append((best["rollout_id"], item))
        return Distilled(items[-MAX_ITEMS:], reference, answer, changed, added)
