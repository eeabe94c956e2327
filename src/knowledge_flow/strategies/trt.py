"""`trt`: Test-time Recursive Thinking (Zhuang et al., arXiv 2602.03094), in its general form for math and
free-form answers.

A round is one iteration of K thinkers (run option `thinkers`, 2 by default; 8 rounds by default), each
following its own strategy (`key_technique`, `what_to_try`):

- Before round 1, one planning call (the graph's `reflect` step) asks for K distinct strategies. Before each
  later round, one reflection call sees the round's candidates with their outcomes and writes the next
  round's K strategies. A call that fails or cannot be parsed leaves the strategies as they were (none after
  a failed planning call: the thinkers then choose their own approach).
- Each rollout sees the problem, the active knowledge items (lessons), the strategy history, its own strategy
  and, with `show_reference` (off by default, as in the authors' scripts), the current best solution.
- Select: the round's answer by a vote over the K rollouts (`select_rule` `vote`, the default; ties to the
  more confident), a confidence-weighted vote (`conf-vote`), or one verifier call that picks a candidate
  (`verifier`; skipped when the rollouts do not disagree). The selected rollout's summary becomes the
  reference solution; its answer is the round's answer.
- Reflect (before the next round, so not after the last): the call writes (a) at most one knowledge item
  with the fields pattern, when_to_use, key_insight, observed_mistakes, kept only when the round showed a
  failure (a rollout that disagreed with the selection, gave no answer or failed; rule `failures_only`),
  (b) the next round's strategies, (c) optionally the number of one shown item to disable. Applied in that
  order: disable, add, then keep the last `max_items` items (5; disabled items count until they age out).
  The strategy history keeps the last `history_rounds` rounds (10).

Calls are stored in the rollout store (``kf_calls``) under ``{run}:{iteration}:plan|reflect|verify`` and
never requested twice. Their replies are JSON objects; the last JSON object of the final text is read.
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
    Reflection,
    StrategyRound,
    ThinkerStrategy,
)
from knowledge_flow.strategies.base import (
    COMMON_OPTIONAL,
    COMMON_VARIABLES,
    ITEM_OVERHEAD,
    BaseStrategy,
    Distilled,
    RolloutPrompt,
    RoundRollout,
    Rules,
    Step,
)
from knowledge_flow.strategies.trt_replies import (
    lesson_text,
    read_lesson,
    read_number,
    read_strategies,
    reply_object,
)
from knowledge_flow.text.answers import normalize
from knowledge_flow.text.parsing import split_thinking

if TYPE_CHECKING:
    from knowledge_flow.state import State

PLAN, REFLECT, VERIFY = "plan", "reflect", "verify"
FAILURES = ("disagrees", "no answer", "failed")


class TrtRules(Rules):
    max_items: int = Field(5, ge=1, description="Knowledge items kept (the last ones; disabled ones count).")
    history_rounds: int = Field(10, ge=1, description="Rounds of strategy history kept and shown.")
    failures_only: bool = Field(
        True, description="Keep a reflection's lesson only when the round showed a failure (no agreement)."
    )
    plan_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The planning call's budget share.")
    reflect_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The reflection's budget share.")
    verify_max_tokens_fraction: float = Field(1.0, gt=0.0, le=1.0, description="The verifier's budget share.")


SPEC = PromptSpec(
    table="trt",
    required=("solve", "plan", "reflect", "verify"),
    optional=(*COMMON_OPTIONAL, "manager_system"),
    variables=COMMON_VARIABLES
    | {"knowledge", "history", "strategy", "strategies", "thinker", "thinkers", "candidates", "selected_answer"},
    rules=TrtRules,
)


def field_of(strategy: ThinkerStrategy | None, key: str) -> str | None:
    return None if strategy is None else str(strategy.get(key, "")) or None


def strategy_view(strategy: ThinkerStrategy | None, number: int) -> dict[str, Any] | None:
    return None if strategy is None else {"number": number, **strategy}


def history_view(history: Sequence[StrategyRound]) -> list[dict[str, Any]]:
    return [
        {
            "round": entry["round"],
            "selected_answer": entry["selected_answer"],
            "agreement": entry["agreement"],
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
        """The selected rollout becomes the reference; the round joins the strategy history."""
        state = step.state
        reference, answer, changed = self.reference_update(state, best, update_reference)
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
        history = [*(state.get("strategy_history") or []), row][-step.rules.history_rounds :]
        return Distilled(
            list(state.get("knowledge", [])), reference, answer, changed, state={"strategy_history": history}
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
        state = step.state
        rules = step.rules
        count = step.params["thinkers"]
        previous = list(state.get("thinker_strategies") or [])
        reply = (
            reply_object(final_text, ("strategies", "reflection", "disable_knowledge_id"))
            if final_text is not None
            else None
        )
        notes: list[str] = []
        if final_text is None:
            notes.append("the call failed")
        elif reply is None:
            notes.append("no JSON object with strategies in the reply")
        strategies = read_strategies((reply or {}).get("strategies"), count)
        if strategies is None:
            strategies = previous
            if reply is not None:
                notes.append("no strategies in the reply: the previous ones are kept")
        outcome = Reflection(
            call_id=call_id,
            kind="plan" if kind == PLAN else "reflect",
            strategies=strategies,
            added=None,
            disabled=None,
            note=None,
        )
        update: dict[str, Any] = {"thinker_strategies": strategies}
        if kind != PLAN and reply is not None:
            record = [dict(item) for item in state.get("knowledge", [])]
            active = [item for item in record if not item.get("disabled")]
            target = read_number(reply.get("disable_knowledge_id"))
            if target is not None and 1 <= target <= len(active):
                active[target - 1]["disabled"] = True
                outcome["disabled"] = target
            elif target is not None and target != 0:
                notes.append(f"no shown item {target} to disable")
            lesson = read_lesson(reply.get("reflection"))
            history = state.get("strategy_history") or []
            failed = bool(history) and any(e["outcome"] in FAILURES for e in history[-1]["entries"])
            if lesson is not None and rules.failures_only and not failed:
                notes.append("no failure in the round: the lesson is not kept")
                lesson = None
            if lesson is not None:
                text = lesson_text(lesson)
                record.append(
                    {
                        "wrong_answer": None,
                        "text": text,
                        "iteration": step.iteration,
                        "tokens": step.tokens.count(text) + ITEM_OVERHEAD,
                        "lesson": lesson,
                    }
                )
                outcome["added"] = text
            update["knowledge"] = record[-rules.max_items :]
        outcome["note"] = "; ".join(notes) or None
        update["reflection"] = outcome
        return update

    # --- the verifier --------------------------------------------------------------------------------
    def verify_prompt(self, step: Step, candidates: Sequence[Candidate]) -> RolloutPrompt:
        variables = self.variables(step)
        variables["candidates"] = [
            {
                "number": number,
                "thinker": candidate.get("thinker", number - 1) + 1,
                "answer": candidate["answer"],
                "summary": candidate["summary"],
                "key_technique": field_of(candidate.get("strategy"), "key_technique"),
                "what_to_try": field_of(candidate.get("strategy"), "what_to_try"),
                "outcome": "candidate",
            }
            for number, candidate in enumerate(candidates, start=1)
        ]
        return RolloutPrompt(
            self._messages(step, VERIFY, variables, "manager_system"),
            self.budget(step, step.rules.verify_max_tokens_fraction),
        )

    def parse_verdict(self, final_text: str, count: int) -> int | None:
        reply = reply_object(final_text, ("selected_solution_id", "ranking"))
        if reply is None:
            return None
        chosen = read_number(reply.get("selected_solution_id"))
        if chosen is None and isinstance(reply.get("ranking"), list) and reply["ranking"]:
            chosen = read_number(reply["ranking"][0])
        return chosen if chosen is not None and 1 <= chosen <= count else None


def final_text(content: str, reasoning: str | None) -> str:
    """The text a call's reply is read from: the final text, or the whole output when that is empty."""
    thinking, final = split_thinking(content, reasoning)
    return final or thinking
