"""Reading TRT's planning, reflection and manager replies (JSON objects, read with `text.json_replies`): the
strategies and the lesson they hold, each field clipped; a lesson's text as prompts show it; a reply applied
to the knowledge record; the state update of a planning, reflection or manager reply (the fallbacks are in
`strategies.trt`'s module text)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knowledge_flow.records import Candidate, KnowledgeItem, Reflection, ThinkerStrategy, Verdict
from knowledge_flow.strategies.base import ITEM_OVERHEAD, Step
from knowledge_flow.strategies.selection import CHOICE_KEYS, read_choice
from knowledge_flow.text.json_replies import clip, read_number, reply_object
from knowledge_flow.text.tokens import TokenCounter

LESSON_FIELDS = ("pattern", "when_to_use", "key_insight", "observed_mistakes")
PLAN, REFLECT = "plan", "reflect"
#: Outcomes of a round's rollout that count as a failure (a reflection's lesson needs one, `failures_only`).
FAILURES = ("disagrees", "no answer", "failed")
REPLY_KEYS = ("strategies", "reflection", "disable_knowledge_id")


def as_list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value] if value else []
    return [text for text in (clip(item) for item in items if not isinstance(item, dict | list)) if text]


def read_strategies(value: Any, count: int) -> list[ThinkerStrategy] | None:
    """At most `count` strategies from a reply's ``strategies`` field; None when there is none."""
    if not isinstance(value, list):
        return None
    strategies: list[ThinkerStrategy] = []
    for entry in value:
        if not isinstance(entry, dict):
            continue
        technique, what = clip(entry.get("key_technique")), clip(entry.get("what_to_try"))
        if technique or what:
            strategies.append(ThinkerStrategy(key_technique=technique, what_to_try=what))
    return strategies[:count] or None


def read_lesson(value: Any) -> dict[str, Any] | None:
    """The reflection's knowledge item, with its four fields; None when it wrote none (null, or nothing in
    them). A lesson written as plain text is kept as its key insight."""
    if isinstance(value, str):
        value = {"key_insight": value}
    if not isinstance(value, dict):
        return None
    lesson = {
        "pattern": clip(value.get("pattern")),
        "when_to_use": as_list(value.get("when_to_use")),
        "key_insight": clip(value.get("key_insight")),
        "observed_mistakes": as_list(value.get("observed_mistakes")),
    }
    return lesson if any(lesson.values()) else None


def lesson_text(lesson: dict[str, Any]) -> str:
    parts = [
        ("Pattern", lesson["pattern"]),
        ("When it applies", "; ".join(lesson["when_to_use"])),
        ("Key insight", lesson["key_insight"]),
        ("Mistakes seen", "; ".join(lesson["observed_mistakes"])),
    ]
    return "\n".join(f"{name}: {value}" for name, value in parts if value)


@dataclass(frozen=True)
class KnowledgeChange:
    """A reply applied to the knowledge record: the whole new record, the item added (its text), the 1-based
    number of the shown item disabled, and why something asked for was not applied."""

    record: list[KnowledgeItem]
    added: str | None
    disabled: int | None
    notes: list[str]


def apply_lessons(
    record: Sequence[KnowledgeItem],
    reply: dict[str, Any],
    *,
    iteration: int,
    counter: TokenCounter,
    max_items: int,
    drop_lesson: str | None = None,
) -> KnowledgeChange:
    """Disable the shown item the reply names (``disable_knowledge_id``), add its lesson (``reflection``) unless
    `drop_lesson` says why not, then keep the last `max_items` items (disabled ones count until they age out)."""
    items = [KnowledgeItem(**item) for item in record]
    active = [item for item in items if not item.get("disabled")]
    notes: list[str] = []
    disabled = None
    target = read_number(reply.get("disable_knowledge_id"))
    if target is not None and 1 <= target <= len(active):
        active[target - 1]["disabled"] = True
        disabled = target
    elif target is not None and target != 0:
        notes.append(f"no shown item {target} to disable")
    lesson = read_lesson(reply.get("reflection"))
    if lesson is not None and drop_lesson:
        notes.append(drop_lesson)
        lesson = None
    added = None
    if lesson is not None:
        added = lesson_text(lesson)
        items.append(
            KnowledgeItem(
                wrong_answer=None,
                text=added,
                iteration=iteration,
                tokens=counter.count(added) + ITEM_OVERHEAD,
                lesson=lesson,
            )
        )
    return KnowledgeChange(items[-max_items:], added, disabled, notes)


def strategies_of(
    reply: dict[str, Any] | None, previous: list[ThinkerStrategy], count: int
) -> tuple[list[ThinkerStrategy], str | None]:
    """The next round's strategies from a reply, or the previous ones (with why) when it has none."""
    strategies = read_strategies((reply or {}).get("strategies"), count)
    if strategies is not None:
        return strategies, None
    return previous, ("no strategies in the reply: the previous ones are kept" if reply is not None else None)


def read_reply(final_text: str | None, keys: Sequence[str], missing: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The reply's JSON object with one of `keys`, and why there is none (`missing` when the text has none)."""
    if final_text is None:
        return None, ["the call failed"]
    reply = reply_object(final_text, keys)
    return reply, ([] if reply is not None else [missing])


def with_lessons(
    step: Step, reply: dict[str, Any], outcome: Reflection, drop_lesson: str | None = None
) -> tuple[list[KnowledgeItem], list[str]]:
    """The knowledge record after the reply's disable and lesson (recorded in `outcome`), and the notes."""
    change = apply_lessons(
        step.state.get("knowledge", []),
        reply,
        iteration=step.iteration,
        counter=step.tokens,
        max_items=step.rules.max_items,
        drop_lesson=drop_lesson,
    )
    outcome["added"], outcome["disabled"] = change.added, change.disabled
    return change.record, change.notes


def reflection_update(step: Step, kind: str, call_id: str, final_text: str | None) -> dict[str, Any]:
    """A planning (`kind` plan) or reflection call's update: ``thinker_strategies``, ``reflection`` and, after a
    reflection, ``knowledge`` (the whole new record)."""
    state = step.state
    reply, notes = read_reply(final_text, REPLY_KEYS, "no JSON object with strategies in the reply")
    strategies, kept = strategies_of(reply, list(state.get("thinker_strategies") or []), step.params["thinkers"])
    notes += [kept] if kept else []
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
        history = state.get("strategy_history") or []
        failed = bool(history) and any(e["outcome"] in FAILURES for e in history[-1]["entries"])
        keep = failed or not step.rules.failures_only
        update["knowledge"], more = with_lessons(
            step, reply, outcome, None if keep else "no failure in the round: the lesson is not kept"
        )
        notes += more
    outcome["note"] = "; ".join(notes) or None
    update["reflection"] = outcome
    return update


def manager_update(step: Step, candidates: Sequence[Candidate], call_id: str, final_text: str | None) -> dict[str, Any]:
    """A manager call's update: ``verdict``, ``thinker_strategies`` (not after the last round), ``knowledge`` and
    ``reflection``; its lesson is never filtered."""
    state = step.state
    reply, notes = read_reply(final_text, (*CHOICE_KEYS, *REPLY_KEYS), "no JSON object in the reply")
    number = read_choice(reply, len(candidates))
    if reply is not None and number is None:
        notes.append("no valid selected_solution_id: the vote decides")
    update: dict[str, Any] = {}
    strategies: list[ThinkerStrategy] = []  # none are asked for after the last round
    if step.iteration + 1 < step.params["iterations"]:
        strategies, kept = strategies_of(reply, list(state.get("thinker_strategies") or []), step.params["thinkers"])
        notes += [kept] if kept else []
        update["thinker_strategies"] = strategies
    outcome = Reflection(call_id=call_id, kind="manage", strategies=strategies, added=None, disabled=None, note=None)
    if reply is not None:
        update["knowledge"], more = with_lessons(step, reply, outcome)
        notes += more
    outcome["note"] = "; ".join(notes) or None
    update["reflection"] = outcome
    update["verdict"] = Verdict(
        call_id=call_id,
        rollout_id=candidates[number - 1]["rollout_id"] if number is not None else None,
        error=None if number is not None else outcome["note"],
    )
    return update
