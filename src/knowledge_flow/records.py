"""The small JSON-native records the graph state is made of: run parameters, knowledge items, parsed rollouts,
token usage. No LangGraph here (the state's channels are in `knowledge_flow.state`), so that validating a
command's input never loads the graph machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired

# pydantic (which LangGraph uses for the input and output JSON schemas) needs typing_extensions' TypedDict
# before Python 3.12.
from typing_extensions import TypedDict

from knowledge_flow.options import AggregationPick, AnswerType, ConfidenceScore, ModelFamily, SelectRule

__all__ = [
    "AggregationPick",
    "AggregationPlan",
    "AnswerType",
    "Candidate",
    "ConfidenceScore",
    "HistoryEntry",
    "KnowledgeItem",
    "Message",
    "ModelFamily",
    "Reflection",
    "RunParams",
    "RunStatus",
    "SelectRule",
    "Selection",
    "StoredRollout",
    "StrategyRound",
    "ThinkerStrategy",
    "TraceVote",
    "Usage",
    "Verdict",
]


RunStatus = Literal["running", "done", "failed"]
Message = dict[str, str]
"""A chat message: ``{"role": ..., "content": ...}``."""


class RunParams(TypedDict):
    """Everything a run needs to continue after a crash (runtime context is not checkpointed)."""

    model: str
    iterations: int
    temperature: float
    top_p: float
    top_k: int
    """-1: no top-k (sent as such; servers fill omitted sampling parameters from their own defaults)."""
    min_p: float
    repetition_penalty: float
    extra_body: dict[str, Any] | None
    """Extra fields sent with every request (e.g. vLLM's ``structured_outputs``, ``chat_template_kwargs``)."""
    max_new_tokens: int
    strategy: str
    answer_type: AnswerType
    knowledge_budget_tokens: int
    prefill: str | None
    prompts: str
    """The prompt set as given (a built-in name or a file)."""
    prompt_set: str
    """Its name."""
    prompt_hash: str
    """SHA-256 of its text; the text is kept in the database (``kf_prompt_sets``)."""
    model_family: ModelFamily
    reasoning_effort: str | None
    stop_policy: str
    """`fixed` (the iteration budget) or `stable:K`."""
    final_answer_rule: str
    """`last` or `majority:W` (W an integer or `all`)."""
    thinkers: int
    topk_thinkers: int
    min_temperature: float
    max_temperature: float
    diversity_weight: float
    dynamic_temperature: bool
    uncertainty_threshold: float | None
    avoid_budget_tokens: int | None
    """Regeneration: token budget of the Things to Avoid list (None: the prompt set's rule)."""
    # --- selection, confidence, TRT and DeepConf (validated by `params.resolve_selection_options`). Runs
    # started before these options existed lack them: read them with `.get` and the defaults below.
    select_rule: NotRequired[SelectRule]
    """How the iteration's answer is chosen among its thinkers: `confidence` (the most confident thinker,
    with the diversity penalty; the default), `vote` (majority over the thinkers, ties to the more confident),
    `conf-vote` (majority weighted by `confidence_score`, a DeepConf measure), `verifier` (one stored call
    picks a candidate; trt only) or `manager` (one stored call per round picks a candidate, writes the lesson
    and the next strategies; trt only)."""
    confidence_score: NotRequired[ConfidenceScore]
    """A thinker's score: `mean-logprob` (mean log-probability of its sampled tokens; the default) or a
    DeepConf measure (`lowest`, `bottom10`, `tail`, `mean`; needs `top_logprobs`)."""
    top_logprobs: NotRequired[int]
    """Candidates per position requested for DeepConf measures (0: none; 20 when a measure is used)."""
    confidence_window: NotRequired[int]
    """DeepConf group size in tokens (2048)."""
    show_reference: NotRequired[bool]
    """trt: rollouts see the current best solution (off, as in the TRT authors' scripts)."""
    warmup_traces: NotRequired[int]
    """deepconf: traces of the warm-up wave (iteration 0) that set the online threshold (16)."""
    confidence_keep: NotRequired[float]
    """deepconf: percent of warm-up-like traces the online threshold keeps (90: DeepConf-high; 10: -low)."""
    seed: NotRequired[int | None]
    """Sampling seed of rollout 0, thinker 0 (rollout k of thinker i: seed + 1024 k + i); None: none sent."""
    trace_budget: NotRequired[int | None]
    """Traces to send in all, the first wave included (deepconf: 256); the last wave is trimmed to it. None:
    whole waves of `thinkers` for `iterations`."""
    aggregation_size: NotRequired[int]
    """rsa: K, the traces of the previous loop each member aggregates (4)."""
    aggregation_pick: NotRequired[AggregationPick]
    """rsa: how the K traces are drawn: `uniform` (the paper) or `confidence` (weighted by `confidence_score`)."""


class KnowledgeItem(TypedDict):
    """One entry of the knowledge record.

    knowledge-flow: a Wrong Answer List item (`wrong_answer` is the answer it refutes); regeneration: the
    current Things to Avoid list; positive-knowledge: one Experimental Knowledge item (`wrong_answer` None).
    """

    wrong_answer: str | None
    text: str
    iteration: int
    tokens: NotRequired[int]
    """Its cost in a prompt, counted when it was made (the served tokenizer where there is one)."""
    disabled: NotRequired[bool]
    """trt: a reflection disabled the item (it is no longer shown but keeps its place until it ages out)."""
    lesson: NotRequired[dict[str, Any]]
    """trt: the item's fields as the reflection wrote them (pattern, when_to_use, key_insight,
    observed_mistakes); `text` is their rendering."""


class ThinkerStrategy(TypedDict):
    """trt: the approach one thinker follows in a round."""

    key_technique: str
    what_to_try: str


class HistoryEntry(TypedDict):
    """trt: one rollout of a past round, as the strategy history shows it."""

    thinker: int
    rollout_id: str
    key_technique: str | None
    what_to_try: str | None
    answer: str | None
    outcome: Literal["selected", "agrees", "disagrees", "no answer", "failed"]


class StrategyRound(TypedDict):
    """trt: one past round: what each thinker tried, the selected answer and the agreement with it."""

    round: int
    """1-based."""
    entries: list[HistoryEntry]
    selected_answer: str | None
    agreement: float
    """Share of the round's rollouts whose answer is the selected one."""
    rule: str
    """How the answer was selected (vote, conf-vote, verifier, manager, confidence; `vote (no verdict)` ...)."""
    kept_previous: NotRequired[bool]
    """The previous round's selection (a candidate of this round) was selected again."""


class Selection(TypedDict):
    """How the last iteration's answer was chosen."""

    rule: str
    """The select rule as applied: `vote`, `vote (tie: confidence)`, `verifier`, `vote (no verdict)` ..."""
    rollout_id: str | None
    answer: str | None
    votes: dict[str, float]
    """Weight per (normalised) answer among the candidates that could vote."""
    agreement: float
    """Share of the candidates whose answer is the selected one."""
    kept_previous: NotRequired[bool]
    """trt: the previous best (a candidate from round 2 on) was selected again."""


class Verdict(TypedDict):
    """The verifier's or manager's choice for the current iteration (consumed by `distill_knowledge`)."""

    call_id: str
    rollout_id: str | None
    error: str | None


class Reflection(TypedDict):
    """trt: what the last planning, reflection or manager call changed."""

    call_id: str
    kind: Literal["plan", "reflect", "manage"]
    strategies: list[ThinkerStrategy]
    added: str | None
    """The knowledge item it added (its text), if any."""
    disabled: int | None
    """The 1-based number (among the items shown) of the item it disabled, if any."""
    note: str | None
    """Why something asked for was not applied (unparsable output, no failure observed, ...)."""


class TraceVote(TypedDict):
    """One rollout as a trace of a confidence-weighted vote (final-answer rule `conf-vote`, stop policy
    `consensus`)."""

    rollout_id: str
    iteration: int
    answer: str | None
    measures: dict[str, float] | None
    """DeepConf measures (lowest, bottom10, tail, mean, tokens); None without log-probabilities."""
    counted: bool
    """False when the trace is kept out of votes (failed, cancelled, or below the online threshold)."""


class AggregationPlan(TypedDict):
    """rsa: the subsets one loop aggregates, drawn when the loop before it was distilled (so the draw is in the
    checkpoint before any of the loop's requests is sent)."""

    iteration: int
    """The loop the plan is for."""
    subsets: list[list[int]]
    """Per member (thinker), the thinkers of the previous loop whose traces it aggregates, in prompt order."""


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class Candidate(TypedDict):
    """What `extract_answer` read from one rollout (one thinker); consumed by `distill_knowledge`."""

    rollout_id: str
    answer: str | None
    summary: str | None
    """The summary's raw text: the next reference solution."""
    error_report: str | None
    """The error report (None when absent or N/A)."""
    extras: dict[str, str]
    """What the strategy needs from the output (e.g. the item text, the Things to Avoid list), small texts."""
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    temperature: float
    confidence: float | None
    """Mean token log-probability, when the server returned log-probabilities."""
    error: str | None
    """Why the rollout failed (no usable response after retries); None when it succeeded."""
    thinker: NotRequired[int]
    """The rollout's index among the iteration's thinkers."""
    strategy: NotRequired[ThinkerStrategy | None]
    """trt: the approach it followed."""
    measures: NotRequired[dict[str, float] | None]
    """DeepConf measures of its trace, when top log-probabilities were returned."""
    excluded: NotRequired[str | None]
    """Why it is kept out of votes: `gconf_threshold` (stopped by the client below the online threshold),
    `below_threshold` (finished, but its lowest group confidence is below it) or `consensus_cancelled` (it
    ended after the stop policy's consensus was reached)."""
    previous_best: NotRequired[bool]
    """trt: the previous round's selection, carried into this round's candidates (not a rollout of it)."""


@dataclass(frozen=True)
class StoredRollout:
    """A stored rollout's texts, as later prompts need them, and what was read from it."""

    messages: list[Message]
    prefill: str | None
    content: str
    reasoning: str | None
    answer: str | None = None
    """The parsed answer (None before parsing, or without one)."""
    summary: str | None = None
    error: str | None = None
    stop_reason: str | None = None
    """Why the trace is kept out of votes (`Candidate.excluded`), if it is."""
    confidence: float | None = None
    measures: dict[str, float] | None = None
