"""The small JSON-native records the graph state is made of: run parameters, knowledge items, parsed rollouts,
token usage. No LangGraph here (the state's channels are in `knowledge_flow.state`), so that validating a
command's input never loads the graph machinery.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

# pydantic (which LangGraph uses for the input and output JSON schemas) needs typing_extensions' TypedDict
# before Python 3.12.
from typing_extensions import TypedDict

from knowledge_flow.options import AnswerType, ModelFamily

__all__ = ["AnswerType", "CurrentRollout", "KnowledgeItem", "ModelFamily", "RunParams", "RunStatus", "Usage"]


RunStatus = Literal["running", "done", "failed"]


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


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class CurrentRollout(TypedDict):
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
