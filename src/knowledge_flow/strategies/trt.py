"""`trt`: Test-time Recursive Thinking (Zhuang et al., arXiv 2602.03094), in its general form for math and
free-form answers, following the loop of the authors' LiveCodeBench runner (without its code execution).

A round is one iteration of K thinkers (run option `thinkers`, 2 by default; 8 rounds by default), each
following its own strategy (`key_technique`, `what_to_try`):

- Before round 1, one planning call (the graph's `reflect` step) asks for K distinct strategies. A call that
  fails or cannot be parsed leaves the thinkers to choose their own approach.
- Each rollout sees the problem, the active knowledge items (lessons), the strategy history, its own strategy
  and, with `show_reference` (off by default, as in the authors' scripts), the current best solution.
- Candidates: the round's K rollouts and, from round 2 on, the previous round's selection (the best so far,
  `State.best`: its stored answer, summary and final text), listed first, as the reference lists it. Every
  select rule counts it. When it wins, the reference and reference answer stay as they were and the round's
  history says the previous best was kept.
- Select (`select_rule`; the prompt set's `[trt.rules]` may set the default):
  - `manager` (kf-qwen, kf-gpt-oss): one manager call per round, also when all candidates agree, sees every
    candidate's final text, the active lessons and the strategy history, and replies with one JSON object:
    ``selected_solution_id``, ``reflection`` (a lesson, or null), ``strategies`` (the next K; none after the
    last round) and optionally ``disable_knowledge_id``. It replaces the reflection call: no `reflect` step
    runs between rounds. A reply that cannot be read as a whole is used as far as it can be: without a valid
    ``selected_solution_id`` the vote decides (`vote (no verdict)`), without strategies the previous ones
    are kept, a lesson or disable that can be read is applied; a failed call changes nothing but the choice,
    which the vote makes. A round with no candidate that has an answer makes no manager call.
  - `vote` (the strategy's default): a majority over the candidates (the previous best is one voter; a tie
    goes to the more confident thinker, then to the first listed, i.e. the previous best), `conf-vote`, or
    `verifier`: one call that picks a candidate (skipped when the candidates do not disagree).
  With these, one reflection call before each later round sees the round's rollouts with their outcomes and
  writes (a) at most one lesson with the fields pattern, when_to_use, key_insight, observed_mistakes, kept
  only when the round showed a failure (a rollout that disagreed with the selection, gave no answer or
  failed; rule `failures_only`, which kf-qwen and kf-gpt-oss turn off as the reference never filters; a
  manager's lesson is never filtered), (b) the next round's strategies, (c) optionally the number of one
  shown item to disable.
- Lessons: disable, add, then keep the last `max_items` items (5; disabled items count until they age out).
  The strategy history keeps the last `history_rounds` rounds (10).

Calls are stored in the rollout store (``kf_calls``) under ``{run}:{iteration}:plan|reflect|verify|manage``
and never requested twice. Their replies are JSON objects; the last JSON object of the final text is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import (
    Candidate,
    HistoryEntry,
    KnowledgeItem,
    Message,
    SelectRule,
    StrategyRound,
    ThinkerStrategy,
)
from knowledge_flow.strategies.base import (
    COMMON_OPTIONAL,
    COMMON_VARIABLES,
    BaseStrategy,
    Distilled,
    RolloutPrompt,
    RoundRollout,
    Rules,
    Step,
)
from knowledge_flow.strategies.selection import candidate_views, field_of
from knowledge_flow.strategies.trt_replies import PLAN, REFLECT, manager_update, reflection_update
from knowledge_flow.text.answers import normalize

if TYPE_CHECKING:
    from knowledge_flow.state import State

VERIFY, MANAGE = "verify", "manage"


class TrtRules(Rules):
    select_rule: SelectRule | None = Field(
        None, description="The select rule of runs that name none (kf-qwen, kf-gpt-oss: manager, as the reference)."
    )
    max_items: int = Field(5, ge=1, description="Knowledge items kept (the last ones; disabled ones count).")
    history_rounds: int = Field(10, ge=1, description="Rounds of strategy history kept and shown.")
    failures_only: bool = Field(
        True,
        description="Keep a reflection's lesson only when the round showed a failure (no agreement); a manager's "
        "lesson is always kept.",
    )
    plan_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The planning call's budget share.")
    reflect_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The reflection's budget share.")
    verify_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The verifier's budget share.")
    manage_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The manager call's budget share.")


SPEC = PromptSpec(
    table="trt",
    required=("solve", "plan", "reflect", "verify"),
    optional=(*COMMON_OPTIONAL, "manager_system", MANAGE),
    variables=COMMON_VARIABLES
    | {
        "knowledge",
        "history",
        "strategy",
        "strategies",
        "thinker",
        "thinkers",
        "candidates",
        "selected_answer",
        "last_round",
    },
    rules=TrtRules,
)


def strategy_view(strategy: ThinkerStrategy | None, number: int) -> dict[str, Any] | None:
    return None if strategy is None else {"number": number, **strategy}


def history_view(history: Sequence[StrategyRound]) -> list[dict[str, Any]]:
    return [
        {
            "round": entry["round"],
            "selected_answer": entry["selected_answer"],
            "agreement": entry["agreement"],
            "kept_previous": bool(entry.get("kept_previous")),
            "entries": [dict(e) for e in entry["entries"]],
        }
        for entry in history
    ]


def outcome_of(candidate: Candidate, selected: Candidate | None, answer_type: Any) -> str:
    if candidate["error"] is not None:
        return "failed"
    key = normalize(candidate["answer"], answer_type)
    if key is None:
        return "no answer"
    if selected is not None and candidate["rollout_id"] == selected["rollout_id"]:
        return "selected"
    chosen = normalize(selected["answer"], answer_type) if selected is not None else None
    return "agrees" if key == chosen else "disagrees"


class Trt(BaseStrategy):
    name = "trt"
    spec = SPEC
    select_rule = "vote"
    defaults: Mapping[str, Any] = {"thinkers": 2, "iterations": 8}
    reflects = True
    verifies = True
    manages = True

    # --- knowledge -----------------------------------------------------------------------------------
    def visible_knowledge(self, state: State, rules: Any) -> list[KnowledgeItem]:
        """The active items, oldest first (their numbers are the ones a reflection may disable)."""
        return [item for item in state.get("knowledge", []) if not item.get("disabled")]

    def variables(self, step: Step) -> dict[str, Any]:
        state = step.state
        strategies = state.get("thinker_strategies") or []
        return {
            **super().variables(step),
            "reference": state.get("reference") if step.params.get("show_reference") else None,
            "knowledge": [
                {"number": number, "text": item["text"], **(item.get("lesson") or {})}
                for number, item in enumerate(self.visible_knowledge(state, step.rules), start=1)
            ],
            "history": history_view(state.get("strategy_history") or []),
            "strategies": [strategy_view(s, n) for n, s in enumerate(strategies, start=1)],
            "strategy": None,
            "thinker": 1,
            "thinkers": self.thinker_count(state),
            "candidates": [],
            "selected_answer": state.get("reference_answer"),
            "last_round": step.iteration + 1 >= step.params["iterations"],
        }

    # --- rollouts ------------------------------------------------------------------------------------
    def _messages(self, step: Step, key: str, variables: dict[str, Any], system_key: str) -> list[Message]:
        messages: list[Message] = []
        system = step.table.render_optional(system_key, **variables)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": step.table.render(key, **variables)})
        return messages

    def build_prompt(self, step: Step) -> RolloutPrompt:
        return self.build_prompts(step, 1)[0]

    def build_prompts(self, step: Step, count: int) -> list[RolloutPrompt]:
        base = self.variables(step)
        strategies = step.state.get("thinker_strategies") or []
        prefill = step.params.get("prefill") or step.table.render_optional(
            "prefill_first" if step.iteration == 0 else "prefill_later", **base
        )
        budget = self.budget(step, step.rules.max_tokens_fraction)
        prompts = []
        for index in range(count):
            own = strategies[index] if index < len(strategies) else None
            variables = {**base, "thinker": index + 1, "thinkers": count, "strategy": strategy_view(own, index + 1)}
            prompts.append(RolloutPrompt(self._messages(step, "solve", variables, "system"), budget, prefill, own))
        return prompts

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        """The selected rollout becomes the reference and the best so far (the previous best, selected again,
        leaves both as they were); the round joins the strategy history."""
        state = step.state
        kept_previous = bool(best.get("previous_best"))
        changed: bool | None = False
        if kept_previous:
            reference, answer = state.get("reference"), state.get("reference_answer")
        else:
            reference, answer, changed = self.reference_update(state, best, update_reference)
        taken = not kept_previous and best["answer"] is not None and answer == best["answer"]
        answer_type = step.params["answer_type"]
        candidates = sorted(state.get("candidates") or [], key=lambda c: c.get("thinker", 0))
        selected = best if best["error"] is None and best["answer"] is not None else None
        entries = [
            HistoryEntry(
                thinker=candidate.get("thinker", position),
                rollout_id=candidate["rollout_id"],
                key_technique=field_of(candidate.get("strategy"), "key_technique"),
                what_to_try=field_of(candidate.get("strategy"), "what_to_try"),
                answer=candidate["answer"],
                outcome=outcome_of(candidate, selected, answer_type),  # type: ignore[typeddict-item]
            )
            for position, candidate in enumerate(candidates)
        ]
        agreeing = sum(1 for e in entries if e["outcome"] in ("selected", "agrees"))
        selection: dict[str, Any] = dict(state.get("selection") or {})
        row = StrategyRound(
            round=step.iteration + 1,
            entries=entries,
            selected_answer=selected["answer"] if selected else None,
            agreement=round(agreeing / len(entries), 4) if entries else 0.0,
            rule=str(selection.get("rule", step.params.get("select_rule", "vote"))),
        )
        if kept_previous:
            row["kept_previous"] = True
        history = [*(state.get("strategy_history") or []), row][-step.rules.history_rounds :]
        carried = {k: v for k, v in best.items() if k != "previous_best"} if taken else state.get("best")
        return Distilled(
            list(state.get("knowledge", [])),
            reference,
            answer,
            changed,
            state={"strategy_history": history, "best": carried},
        )

    # --- the reflect step ----------------------------------------------------------------------------
    def reflect_prompt(self, step: Step, kind: str, rounds: Sequence[RoundRollout]) -> RolloutPrompt:
        variables = self.variables(step)
        variables["thinkers"] = step.params["thinkers"]
        variables["candidates"] = [
            {
                "number": number,
                "thinker": rollout.thinker + 1,
                "answer": rollout.answer,
                "summary": rollout.summary,
                "key_technique": field_of(rollout.strategy, "key_technique"),
                "what_to_try": field_of(rollout.strategy, "what_to_try"),
                "outcome": rollout.outcome,
            }
            for number, rollout in enumerate(rounds, start=1)
        ]
        fraction = step.rules.plan_max_tokens_fraction if kind == PLAN else step.rules.reflect_max_tokens_fraction
        key = PLAN if kind == PLAN else REFLECT
        return RolloutPrompt(self._messages(step, key, variables, "manager_system"), self.budget(step, fraction))

    def apply_reflection(self, step: Step, kind: str, call_id: str, final_text: str | None) -> dict[str, Any]:
        """The update: ``thinker_strategies``, ``reflection`` and, after a reflection, ``knowledge`` (the whole
        new record)."""
        return reflection_update(step, PLAN if kind == PLAN else REFLECT, call_id, final_text)

    # --- the verifier and the manager ------------------------------------------------------------------
    def verify_prompt(self, step: Step, candidates: Sequence[Candidate]) -> RolloutPrompt:
        variables = self.variables(step)
        variables["candidates"] = candidate_views(candidates, step.history)
        return RolloutPrompt(
            self._messages(step, VERIFY, variables, "manager_system"),
            self.budget(step, step.rules.verify_max_tokens_fraction),
        )

    def manage_prompt(self, step: Step, candidates: Sequence[Candidate]) -> RolloutPrompt:
        variables = self.variables(step)
        variables["thinkers"] = step.params["thinkers"]
        variables["candidates"] = candidate_views(candidates, step.history)
        return RolloutPrompt(
            self._messages(step, MANAGE, variables, "manager_system"),
            self.budget(step, step.rules.manage_max_tokens_fraction),
        )

    def apply_manager(
        self, step: Step, candidates: Sequence[Candidate], call_id: str, final_text: str | None
    ) -> dict[str, Any]:
        """The update from the manager's reply: ``verdict`` (the candidate chosen, for `distill_knowledge`),
        ``thinker_strategies`` (not after the last round; the previous ones when the reply has none),
        ``knowledge`` (the whole new record) and ``reflection``. What cannot be read is left to the fallbacks
        (see the module)."""
        return manager_update(step, candidates, call_id, final_text)
