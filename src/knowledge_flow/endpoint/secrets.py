"""Keeping secrets out of every text that is stored, logged or shown.

The secrets of a run are its API key and those its endpoint URLs carry (`urls.url_secrets`). `redact` takes
out of a text each secret and each piece of one that starts like it: any run of 8 characters or more that
the secret starts with (a key cut short in an error body, or repeated in part by a model); a secret shorter
than 8 characters is taken out where it appears whole (one of fewer than 4 is not, nor the placeholder key
``EMPTY``). Bearer tokens and ``api-key``-like fields are taken out whatever their value.

Where it applies: every text of a reply (content, reasoning, model name: `requests.send`), every error
(`describe`), URLs (`urls.Address.shown`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from knowledge_flow.endpoint.urls import REDACTED
from knowledge_flow.text.safe import storable

#: A piece of a secret this long (or longer) that starts the secret is redacted wherever it appears.
MIN_PREFIX = 8
MIN_SECRET = 4
PLACEHOLDER_KEY = "EMPTY"

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',}]+")
_KEY_FIELD = re.compile(r"(?i)((?:api[_-]?key|authorization|x-api-key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+")
#: The longest account of an error that is kept.
MAX_DESCRIPTION = 2000


def usable(secrets: Iterable[str]) -> list[str]:
    """The secrets worth redacting, longest first."""
    kept = {s for s in secrets if s and len(s) >= MIN_SECRET and s != PLACEHOLDER_KEY}
    return sorted(kept, key=len, reverse=True)


def _without(text: str, secret: str) -> str:
    if len(secret) < MIN_PREFIX:
        return text.replace(secret, REDACTED)
    head = secret[:MIN_PREFIX]
    if head not in text:
        return text
    pieces: list[str] = []
    position = 0
    while (found := text.find(head, position)) >= 0:
        end = found + MIN_PREFIX
        while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
            end += 1
        pieces += [text[position:found], REDACTED]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` without the given secrets (or their leading pieces, see the module), bearer tokens and
    api-key fields."""
    for secret in usable(secrets):
        text = _without(text, secret)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Outside text as it may be kept: storable, without secrets."""
    return redact(storable(text), secrets)


def describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """A one-line account of an exception (its blanks and line breaks folded into single spaces): storable,
    redacted and bounded."""
    return " ".join(scrub(f"{type(exc).__name__}: {exc}", secrets).split())[:MAX_DESCRIPTION]
