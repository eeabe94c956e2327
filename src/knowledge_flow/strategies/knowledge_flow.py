"""`knowledge-flow`: the original method (reference solution + Wrong Answer List).

Rules of the Wrong Answer List (the prompt set's top-level ``[rules]`` table sets the numbers):

- An item is added when a kept rollout's answer differs from the reference (previous) answer and the rollout
  wrote the error-report section (`report_section`; with `skip_na_report`, not "N/A"). Its wrong answer is the
  previous answer; its text is the report section's raw text (`item_text = "report"`) or everything after
  the report header, summary and answer included (`"after_header"`, as the original gpt-oss script does).
- The record is append-only. A prompt shows it newest first, at most `items_per_wrong_answer` items for each
  wrong answer (2 in the Qwen script, 1 in the gpt-oss one), within the run's knowledge token budget.
- Each item's cost is counted once, when it is made, with the served model's tokenizer where there is one.

The guard (label-free; every rule defaults to the paper's behaviour, which kf-gpt-oss and kf-qwen keep; the
kf-instruct set turns it on for small instruct models). Votes are the iterations' answers so far, this one's
included (the best rollout of each iteration; equal answers after normalisation):

- ``reference_rule = "plurality"``: a changed answer replaces the reference (solution and answer) only when
  more iterations have given it than the reference's answer; otherwise the reference stays. (``"latest"``,
  the paper: the latest answer always becomes the reference.)
- ``list_rule = "outvoted"``: a changed answer lists the reference answer as wrong only when more iterations
  have given the new answer than the reference answer, so an answer rollouts agree on is not called wrong
  until more rollouts refute it. (``"changed"``, the paper: every changed answer with a report lists it.)
- ``independent_on_tie``: while the most given answers tie (two or more different answers with the same
  count), the next rollout is independent: the ``first`` prompt, no reference and no list, a fresh vote.
- ``reference_min_votes = k``: the reference (and the list) is shown only once k iterations have given its
  answer; until then rollouts are independent (1, the paper: from rollout 1 on).
- ``independent_every = k``: rollouts k, 2k, ... are independent as well (0: never).
- ``final_answer``: the final-answer rule a run with this set uses when it names none (``majority:all``:
  the most frequent answer of the trajectory); None: the strategy's default (``last``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import AnswerType, Candidate, KnowledgeItem
from knowledge_flow.strategies.base import (
    COMMON_OPTIONAL,
    COMMON_VARIABLES,
    ITEM_OVERHEAD,
    BaseStrategy,
    Distilled,
    RolloutPrompt,
    Rules,
    Step,
    item_tokens,
)
from knowledge_flow.strategies.policies import parse_final_answer_rule
from knowledge_flow.text.answers import equivalent, normalize
from knowledge_flow.text.parsing import REPORT, ParsedRollout
from knowledge_flow.text.tokens import TokenCounter

if TYPE_CHECKING:
    from knowledge_flow.state import State

ITEM = "item"
"""The extras key of the text a rollout's item would take."""


class KnowledgeFlowRules(Rules):
    items_per_wrong_answer: int = Field(2, ge=1, description="Items shown per wrong answer, newest first.")
    report_section: str = Field(REPORT, min_length=1, description="The output section holding the error report.")
    item_text: Literal["report", "after_header"] = Field(
        "report", description="report: the report section only; after_header: everything after its header."
    )
    skip_na_report: bool = Field(True, description="Whether a report of N/A adds no item.")
    reference_rule: Literal["latest", "plurality"] = Field(
        "latest",
        description="latest: the latest answer becomes the reference (the paper); plurality: a changed answer "
        "replaces it only when more iterations have given it than the reference's answer.",
    )
    list_rule: Literal["changed", "outvoted"] = Field(
        "changed",
        description="changed: a changed answer with a report lists the reference answer as wrong (the paper); "
        "outvoted: only when more iterations have given the new answer than the reference answer.",
    )
    independent_on_tie: bool = Field(
        False, description="While the most given answers tie, the next rollout is independent (the first prompt)."
    )
    reference_min_votes: int = Field(
        1,
        ge=1,
        description="The reference is shown once this many iterations gave its answer; before, rollouts "
        "are independent.",
    )
    independent_every: int = Field(0, ge=0, description="Rollouts k, 2k, ... are independent (0: never).")
    final_answer: str | None = Field(
        None, description="The final-answer rule of runs that name none (last, majority:W); None: last."
    )

    @field_validator("final_answer")
    @classmethod
    def _known_rule(cls, value: str | None) -> str | None:
        if value is not None:
            parse_final_answer_rule(value)
        return value


SPEC = PromptSpec(
    table=None,
    required=("first", "later"),
    optional=COMMON_OPTIONAL,
    variables=COMMON_VARIABLES | {"knowledge"},
    rules=KnowledgeFlowRules,
)


def new_item(
    previous_answer: str | None,
    answer: str | None,
    text: str | None,
    iteration: int,
    answer_type: AnswerType,
    counter: TokenCounter,
) -> KnowledgeItem | None:
    """The item a rollout adds to the record, or None."""
    if previous_answer is None or answer is None or text is None:
        return None
    if equivalent(previous_answer, answer, answer_type):
        return None
    wrong = normalize(previous_answer, answer_type) or previous_answer
    text = text.strip()
    return KnowledgeItem(wrong_answer=wrong, text=text, iteration=iteration, tokens=counter.count(text) + ITEM_OVERHEAD)


def tally(answers: Iterable[str | None], answer_type: AnswerType) -> Counter[str]:
    """How many times each answer was given (normalised; missing answers are not counted)."""
    return Counter(key for key in (normalize(a, answer_type) for a in answers) if key is not None)


def votes_for(votes: Counter[str], answer: str | None, answer_type: AnswerType) -> int:
    key = normalize(answer, answer_type)
    return votes[key] if key is not None else 0


def tied_at_top(votes: Counter[str]) -> bool:
    """Whether two or more different answers share the highest count."""
    counts = sorted(votes.values(), reverse=True)
    return len(counts) >= 2 and counts[0] == counts[1]


def visible_items(
    record: Sequence[KnowledgeItem], budget_tokens: int, answer_type: AnswerType = "integer", per_answer: int = 2
) -> list[KnowledgeItem]:
    """The items a prompt shows: newest first, at most `per_answer` per wrong answer, within the budget.

    Items are taken newest first while they fit; an item that does not fit is skipped, and older, shorter
    items may still fit after it.
    """
    shown: list[KnowledgeItem] = []
    seen: dict[str, int] = {}
    used = 0
    for item in reversed(record):
        wrong = item["wrong_answer"] or ""
        key = normalize(wrong, answer_type) or wrong
        if seen.get(key, 0) >= per_answer:
            continue
        cost = item_tokens(item)
        if used + cost > budget_tokens:
            continue
        seen[key] = seen.get(key, 0) + 1
        used += cost
        shown.append(item)
    return shown


def numbered(items: Sequence[KnowledgeItem]) -> list[dict[str, Any]]:
    """Items as prompt templates see them: `number` (1-based, display order), `wrong_answer`, `text`."""
    return [
        {"number": number, "wrong_answer": item["wrong_answer"], "text": item["text"]}
        for number, item in enumerate(items, start=1)
    ]


class KnowledgeFlow(BaseStrategy):
    name = "knowledge-flow"
    spec = SPEC

    def section_names(self, rules: Any) -> tuple[str, ...]:
        return (rules.report_section,)

    def report_section(self, rules: Any) -> str:
        return str(rules.report_section)

    def extras(self, parsed: ParsedRollout, rules: Any) -> dict[str, str]:
        if rules.report_section not in parsed.sections:
            return {}
        if rules.skip_na_report and parsed.error_report is None:
            return {}
        text = parsed.after_header(rules.report_section) if rules.item_text == "after_header" else None
        text = text or parsed.raw.get(rules.report_section)
        return {ITEM: text} if text else {}

    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        params = state["params"]
        return visible_items(
            state.get("knowledge", []),
            params["knowledge_budget_tokens"],
            params["answer_type"],
            rules.items_per_wrong_answer,
        )

    def variables(self, step: Step) -> dict[str, Any]:
        return {**super().variables(step), "knowledge": numbered(self.visible_knowledge(step.state, step.rules))}

    def independent(self, step: Step) -> bool:
        """Whether the next rollout is an independent one (the `first` prompt), by the guard's rules."""
        rules, iteration = step.rules, step.iteration
        if iteration == 0:
            return True
        if rules.independent_every and iteration % rules.independent_every == 0:
            return True
        answer_type = step.params["answer_type"]
        votes = tally(step.state.get("answers", []), answer_type)
        reference_votes = votes_for(votes, step.state.get("reference_answer"), answer_type)
        if rules.reference_min_votes > 1 and reference_votes < rules.reference_min_votes:
            return True
        return bool(rules.independent_on_tie) and tied_at_top(votes)

    def build_prompt(self, step: Step) -> RolloutPrompt:
        key = "first" if self.independent(step) else "later"
        return self.render(step, key, self.variables(step), step.rules.max_tokens_fraction)

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        """A kept rollout whose answer differs from the reference answer and that wrote an error report adds
        an item whose wrong answer is the reference (previous) answer; the best rollout's comes first."""
        state = step.state
        rules = step.rules
        answer_type = state["params"]["answer_type"]
        record = list(state.get("knowledge", []))
        previous = state.get("reference_answer")
        votes = tally([*state.get("answers", []), best["answer"]], answer_type)
        added: list[tuple[str, KnowledgeItem]] = []
        for candidate in kept:
            text = candidate["extras"].get(ITEM)
            item = new_item(previous, candidate["answer"], text, step.iteration, answer_type, step.tokens)
            if (
                item is not None
                and rules.list_rule == "outvoted"
                and votes_for(votes, candidate["answer"], answer_type) <= votes_for(votes, previous, answer_type)
            ):
                item = None
            if item is not None and all(item["text"] != other["text"] for _, other in added):
                added.append((candidate["rollout_id"], item))
        record.extend(item for _, item in added)
        reference, answer, changed = self.reference_update(state, best, update_reference)
        if (
            rules.reference_rule == "plurality"
            and changed
            and previous is not None
            and votes_for(votes, best["answer"], answer_type) <= votes_for(votes, previous, answer_type)
        ):
            reference, answer = state.get("reference"), previous
        return Distilled(record, reference, answer, changed, added)
