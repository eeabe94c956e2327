"""GenSelect: one call that reads N candidate solutions and names the best (NVIDIA NeMo-Skills'
``parallel_thinking.mode=genselect``, a generative best-of-N), as a select rule and as a final-answer rule.

- Select rule ``genselect``: among an iteration's thinkers (and TRT's previous best), one call per iteration
  whose candidates disagree (like the verifier: when every candidate gives the same answer the vote decides
  and no call is made). Call id ``{run}:{iteration}:genselect``.
- Final-answer rule ``genselect``: when the run stops, one call among the pool of traces: the last population
  for strategies whose `final_pool` is ``last`` (rsa), every trace of the run otherwise (self-consistency,
  DeepConf: only the traces that vote). Call id ``{run}:{last iteration}:genselect-final``. Without a
  disagreement in the pool no call is made.

The call sees each candidate's final text (the reasoning of thinking models left out), numbered from 1, and
replies with a JSON object whose ``selected_solution_id`` names one (read like TRT's manager and verifier,
`strategies.selection.choice_in`). A failed call, or a reply without a valid choice, leaves the answer to the
vote (select rule) or to the pool's plurality (final-answer rule). Calls are stored (``kf_calls``) before they
are used and never requested twice; their tokens count in the run's usage and in `kflow report`.

Prompts come from the prompt set's ``[genselect]`` table (``select``, optional ``system``); the variables are
the common ones and ``candidates`` (``number``, ``text``, ``answer``, ``summary``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from knowledge_flow.prompts import PromptSpec, PromptTable
from knowledge_flow.records import AnswerType, Message, TraceVote
from knowledge_flow.strategies.base import ANSWER_SLOTS, COMMON_VARIABLES, RolloutPrompt, Rules
from knowledge_flow.text.answers import normalize

#: Call kinds (``kf_calls.kind``): the select rule's call per iteration, the final answer's call.
SELECT, FINAL = "genselect", "genselect-final"


class GenSelectRules(Rules):
    pass


SPEC = PromptSpec(
    table="genselect",
    required=("select",),
    optional=("system",),
    variables=COMMON_VARIABLES | {"candidates"},
    rules=GenSelectRules,
)


def final_call_id(run_id: str, last: int) -> str:
    """The id of the final answer's call of a run whose last iteration is `last`."""
    return f"{run_id}:{last}:{FINAL}"


def genselect_prompt(
    table: PromptTable, state: Mapping[str, Any], candidates: Sequence[dict[str, Any]], iteration: int
) -> RolloutPrompt:
    """The call's prompt over the numbered candidates (`selection.candidate_views` or `stored_views`)."""
    params = state["params"]
    variables = {
        "problem": state["problem"],
        "answer_slot": ANSWER_SLOTS[params["answer_type"]],
        "iteration": iteration,
        "reference": state.get("reference"),
        "candidates": list(candidates),
    }
    messages: list[Message] = []
    system = table.render_optional("system", **variables)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": table.render("select", **variables)})
    budget = max(1, int(params["max_new_tokens"] * table.rules.max_tokens_fraction))
    return RolloutPrompt(messages, budget)


def final_pool(traces: Sequence[TraceVote], pool: Literal["all", "last"], answer_type: AnswerType) -> list[TraceVote]:
    """The traces the final answer's call chooses among: those that vote and have an answer, of the last
    iteration that has traces (`pool` ``last``) or of every iteration."""
    voters = [t for t in traces if t["counted"] and normalize(t["answer"], answer_type) is not None]
    if pool == "last" and traces:
        last = max(t["iteration"] for t in traces)
        voters = [t for t in voters if t["iteration"] == last]
    return voters


def pool_traces(traces: Sequence[TraceVote], pool: Literal["all", "last"], upto: int) -> list[TraceVote]:
    """The traces a final answer after iteration `upto` is taken from: those of iterations 0..upto, or of
    iteration `upto` alone (`pool` ``last``)."""
    if pool == "last":
        return [t for t in traces if t["iteration"] == upto]
    return [t for t in traces if t["iteration"] <= upto]


def disagree(traces: Sequence[TraceVote], answer_type: AnswerType) -> bool:
    """Whether the traces give at least two different answers (otherwise there is nothing to select)."""
    return len({normalize(t["answer"], answer_type) for t in traces} - {None}) >= 2
