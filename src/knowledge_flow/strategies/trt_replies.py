"""Reading TRT's planning, reflection and verifier replies: the JSON objects in a reply, the strategies and the
lesson they hold, each field clipped; a lesson's text as prompts show it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from knowledge_flow.records import ThinkerStrategy

#: At most this many characters of a strategy field or lesson field are kept.
FIELD_LIMIT = 2000
#: At most this many ``{`` positions of a reply are tried as the start of a JSON object.
JSON_STARTS = 2000
LESSON_FIELDS = ("pattern", "when_to_use", "key_insight", "observed_mistakes")


def json_objects(text: str) -> list[dict[str, Any]]:
    """The top-level JSON objects in `text`, in order (code fences and prose around them are ignored)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    end = 0
    tried = 0
    for match in re.finditer(r"\{", text):
        start = match.start()
        if start < end:
            continue
        tried += 1
        if tried > JSON_STARTS:
            break
        try:
            value, stop = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
            end = stop
    return found


def reply_object(text: str, keys: Sequence[str]) -> dict[str, Any] | None:
    """The last top-level JSON object of the reply that has one of `keys`."""
    return next((value for value in reversed(json_objects(text)) if any(key in value for key in keys)), None)


def clip(value: Any) -> str:
    return " ".join(str(value).split())[:FIELD_LIMIT] if value is not None else ""


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
    """The reflection's knowledge item, with its four fields; None when it wrote none."""
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


def read_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# --- what the templates see ------------------------------------------------------------------------------
