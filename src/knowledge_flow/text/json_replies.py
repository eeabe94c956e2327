"""Reading the JSON object a model was asked to reply with: the top-level objects of a reply (prose and code
fences around them ignored, the work bounded), the one that holds the expected keys, numbers and texts as
models write them."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

#: At most this many characters of a text field are kept.
FIELD_LIMIT = 2000
#: At most this many ``{`` positions of a reply are tried as the start of a JSON object.
JSON_STARTS = 2000


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
    """A field as one line of at most `FIELD_LIMIT` characters ("" for None)."""
    return " ".join(str(value).split())[:FIELD_LIMIT] if value is not None else ""


def read_number(value: Any) -> int | None:
    """A whole number as a model may write it (``3``, ``3.0``, ``"3"``); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
