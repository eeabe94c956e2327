"""What every strategy provides, and the defaults most of them share.

A strategy owns its prompt-set table (`spec`: keys, template variables, rules with their defaults), the
output sections it reads, how a rollout's prompt is built from the state, and how the best rollouts of an
iteration change the knowledge record and the reference solution. The graph's loop never changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from knowledge_flow.prompts import PromptSpec, PromptTable
from knowledge_flow.records import (
    AnswerType,
    Candidate,
    KnowledgeItem,
    Message,
    RunParams,
    StoredRollout,
    ThinkerStrategy,
)
from knowledge_flow.strategies.budget import wave_size
from knowledge_flow.text.answers import equivalent
from knowledge_flow.text.parsing import ParsedRollout
from knowledge_flow.text.tokens import TokenCounter

if TYPE_CHECKING:
    from knowledge_flow.state import State


#: What a prompt set's templates see in every strategy.
COMMON_VARIABLES = frozenset({"problem", "answer_slot", "iteration", "reference"})
#: The optional keys every strategy reads.
COMMON_OPTIONAL = ("system", "prefill_first", "prefill_later")

ANSWER_SLOTS: dict[AnswerType, str] = {"integer": "<integer>", "latex": "<answer in LaTeX>", "text": "<answer>"}


class Rules(BaseModel):
    """Rules every strategy has; strategies extend this model with their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_tokens_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="Share of max_new_tokens a rollout may generate (the paper: 0.9)."
    )


class RolloutReader(Protocol):
    """Read access to stored rollouts (the rollout store)."""

    def stored_texts(self, rollout_id: str) -> StoredRollout | None: ...

    def best_rollout_id(self, run_id: str, iteration: int) -> str | None:
        """The id of the rollout whose answer counted in `iteration` (the best kept thinker)."""
        ...


@dataclass(frozen=True)
class RolloutPrompt:
    """What one rollout sends: chat messages, optionally a prefill the generation continues, and the
    requested generation budget (before it is fitted to the served context)."""

    messages: list[Message]
    max_tokens: int
    prefill: str | None = None
    strategy: ThinkerStrategy | None = None
    """trt: the approach this thinker follows (stored with the rollout)."""

    def same_request(self, other: RolloutPrompt) -> bool:
        """Whether both send the same request (thinkers that may share one request with ``n``)."""
        return (self.messages, self.max_tokens, self.prefill) == (other.messages, other.max_tokens, other.prefill)


@dataclass(frozen=True)
class Streaming:
    """How `solve` streams a strategy's rollouts: with top log-probabilities, stopping a trace once its
    group confidence over `window` tokens falls below `threshold` (None: never stop); with `per_trace`, the
    stop policy is checked as each trace finishes (`knowledge_flow.nodes.waves`)."""

    threshold: float | None
    window: int
    per_trace: bool = False


@dataclass(frozen=True)
class Screened:
    """The iteration's rollouts after a strategy's screening (before the thinkers are selected)."""

    candidates: list[Candidate]
    state: dict[str, Any] = field(default_factory=dict)
    """State fields the screening sets (e.g. DeepConf's online threshold)."""


@dataclass(frozen=True)
class Step:
    """What a strategy sees when it builds a prompt or distills an iteration."""

    state: State
    table: PromptTable
    tokens: TokenCounter
    history: RolloutReader

    @property
    def params(self) -> RunParams:
        return self.state["params"]

    @property
    def iteration(self) -> int:
        return self.state.get("iteration", 0)

    @property
    def rules(self) -> Any:
        return self.table.rules


@dataclass(frozen=True)
class Distilled:
    """How one iteration changes the state."""

    knowledge: list[KnowledgeItem]
    """The whole new knowledge record."""
    reference: str | None
    reference_answer: str | None
    changed: bool | None
    """Whether the iteration's answer differs from the reference answer (None for the first iteration)."""
    added: list[tuple[str, KnowledgeItem]] = field(default_factory=list)
    """(rollout id, item) for each item this iteration added."""
    state: dict[str, Any] = field(default_factory=dict)
    """Other state fields the strategy sets (e.g. TRT's strategy history)."""


class Strategy(Protocol):
    name: str
    spec: PromptSpec
    final_answer_rule: str
    """The default label-free final-answer rule (see `knowledge_flow.strategies.policies`)."""
    stop_policy: str
    """The default stop policy."""
    select_rule: str
    """The default way the iteration's answer is chosen among its thinkers (see `strategies.thinkers`)."""
    confidence_score: str
    """The default thinker score."""
    defaults: Mapping[str, Any]
    """Run options this strategy defaults differently from the run's own defaults (e.g. ``thinkers``,
    ``iterations``, ``max_new_tokens``); a value the user gives wins. Only options whose field is ``None`` by
    default (`knowledge_flow.options.fallback_of`) can be named."""
    reflects: bool
    """Whether the graph runs `reflect` before each iteration (the strategy is then a `Reflecting`)."""
    verifies: bool
    """Whether the strategy's prompt-set table has a verifier (select rule `verifier`)."""
    manages: bool
    """Whether the strategy's prompt-set table may have a manager (select rule `manager`: one call per
    iteration chooses the answer and writes the next iteration's knowledge and strategies)."""

    def first_wave(self, params: Mapping[str, Any]) -> int:
        """Rollouts of the first iteration (a trace budget counts them; later iterations have `thinkers`)."""
        ...

    def thinker_count(self, state: State) -> int:
        """Rollouts of the next iteration."""
        ...

    def build_prompts(self, step: Step, count: int) -> list[RolloutPrompt]:
        """One prompt per thinker of the next iteration (thinkers with equal prompts share a request)."""
        ...

    def streaming(self, step: Step) -> Streaming | None:
        """Whether the next iteration's rollouts are streamed, and when a trace is stopped."""
        ...

    def screen(self, step: Step, candidates: list[Candidate]) -> Screened:
        """The iteration's parsed rollouts as selection sees them (e.g. marked as kept out of votes)."""
        ...

    def section_names(self, rules: Any) -> tuple[str, ...]:
        """Output sections the parser must recognise (besides the summary and answer)."""
        ...

    def report_section(self, rules: Any) -> str:
        """The section whose N/A-or-not says whether a rollout reported an error."""
        ...

    def extras(self, parsed: ParsedRollout, rules: Any) -> dict[str, str]:
        """The small texts of a parsed rollout that `distill` needs (they go into the state)."""
        ...

    def build_prompt(self, step: Step) -> RolloutPrompt:
        """The prompt of the next rollout (the same for every thinker of an iteration)."""
        ...

    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        """The knowledge items the next prompt shows, in display order."""
        ...

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        """The knowledge record and reference after an iteration whose best rollout is `best`."""
        ...


class Reflecting(Strategy, Protocol):
    """A strategy with a `reflect` step: one stored LLM call before an iteration (TRT: planning before the first
    round, reflection before the others unless a manager call after each round does its work)."""

    def reflect_prompt(self, step: Step, kind: str, rounds: Sequence[RoundRollout]) -> RolloutPrompt:
        """The call's prompt; `rounds` are the last round's rollouts (empty for planning)."""
        ...

    def apply_reflection(self, step: Step, kind: str, call_id: str, final_text: str | None) -> dict[str, Any]:
        """The state update from the call's final text (None when the call failed)."""
        ...

    def verify_prompt(self, step: Step, candidates: Sequence[Candidate]) -> RolloutPrompt:
        """The verifier's prompt over the numbered candidates (1-based, in order)."""
        ...

    def manage_prompt(self, step: Step, candidates: Sequence[Candidate]) -> RolloutPrompt:
        """The manager's prompt over the numbered candidates (1-based, in order)."""
        ...

    def apply_manager(
        self, step: Step, candidates: Sequence[Candidate], call_id: str, final_text: str | None
    ) -> dict[str, Any]:
        """The state update from the manager's final text (None when the call failed), with its ``verdict``."""
        ...


@dataclass(frozen=True)
class RoundRollout:
    """A rollout of the last round as a reflection sees it."""

    thinker: int
    rollout_id: str
    answer: str | None
    summary: str | None
    strategy: ThinkerStrategy | None
    outcome: str
    error: str | None


class BaseStrategy:
    """Defaults: the prompt set's `first`/`later` templates with the common variables, no knowledge shown, and
    the reference solution following the best rollout's summary and answer."""

    name = "base"
    final_answer_rule = "last"
    stop_policy = "fixed"
    select_rule = "confidence"
    confidence_score = "mean-logprob"
    defaults: Mapping[str, Any] = {}
    reflects = False
    verifies = False
    manages = False
    spec: PromptSpec

    def first_wave(self, params: Mapping[str, Any]) -> int:
        return int(params["thinkers"])

    def thinker_count(self, state: State) -> int:
        params = state["params"]
        return wave_size(
            state.get("iteration", 0), self.first_wave(params), params["thinkers"], params.get("trace_budget")
        )

    def build_prompts(self, step: Step, count: int) -> list[RolloutPrompt]:
        return [self.build_prompt(step)] * count

    def streaming(self, step: Step) -> Streaming | None:
        return None

    def screen(self, step: Step, candidates: list[Candidate]) -> Screened:
        return Screened(candidates)

    def section_names(self, rules: Any) -> tuple[str, ...]:
        return ()

    def report_section(self, rules: Any) -> str:
        return "Error Report"

    def extras(self, parsed: ParsedRollout, rules: Any) -> dict[str, str]:
        return {}

    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        return []

    def variables(self, step: Step) -> dict[str, Any]:
        return {
            "problem": step.state["problem"],
            "answer_slot": ANSWER_SLOTS[step.params["answer_type"]],
            "iteration": step.iteration,
            "reference": step.state.get("reference"),
        }

    def budget(self, step: Step, fraction: float) -> int:
        return max(1, int(step.params["max_new_tokens"] * fraction))

    def render(self, step: Step, key: str, variables: dict[str, Any], fraction: float) -> RolloutPrompt:
        """The user message `key`, after the set's optional system message; the prefill is the run's own
        (`prefill` option) or the set's `prefill_first` / `prefill_later`."""
        table = step.table
        messages: list[Message] = []
        system = table.render_optional("system", **variables)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": table.render(key, **variables)})
        prefill = step.params.get("prefill") or table.render_optional(
            "prefill_first" if key == "first" else "prefill_later", **variables
        )
        return RolloutPrompt(messages, self.budget(step, fraction), prefill)

    def build_prompt(self, step: Step) -> RolloutPrompt:
        key = "first" if step.iteration == 0 else "later"
        return self.render(step, key, self.variables(step), step.rules.max_tokens_fraction)

    def reference_update(
        self, state: State, best: Candidate, update_reference: bool
    ) -> tuple[str | None, str | None, bool | None]:
        """(reference, reference answer, changed). A rollout with no answer, or an uncertain iteration,
        leaves the reference as it was, so one broken output never erases what earlier rollouts found."""
        previous = state.get("reference_answer")
        reference = state.get("reference")
        if best["answer"] is None:
            return reference, previous, None
        first = state.get("iteration", 0) == 0
        changed = None if first else not equivalent(previous, best["answer"], state["params"]["answer_type"])
        if not update_reference:
            return reference, previous, changed
        return (best["summary"] or reference), best["answer"], changed

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        reference, answer, changed = self.reference_update(step.state, best, update_reference)
        return Distilled(list(step.state.get("knowledge", [])), reference, answer, changed)


def item_tokens(item: KnowledgeItem, counter: TokenCounter | None = None) -> int:
    """An item's cost in a prompt: its text counted when it was made (the served tokenizer where there is
    one), or estimated for records written before counts were kept."""
    stored = item.get("tokens")
    if stored is not None:
        return stored
    from knowledge_flow.text.tokens import estimate_tokens

    return (counter.count(item["text"]) if counter is not None else estimate_tokens(item["text"])) + ITEM_OVERHEAD


#: Tokens a list item takes besides its text (number, wrong answer, markup), added to its counted text.
ITEM_OVERHEAD = 12
