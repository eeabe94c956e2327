"""Endpoint URLs as given on the command line: one, or several separated by commas (replicas).

A URL may carry secrets: a key in its user-info (``http://user:KEY@host/v1``, or ``http://KEY@host/v1``) and
secret-looking query parameters (``?api-key=KEY``). They are used, never kept: `Address` splits a URL into
what requests go to (no user-info, no query), the query parameters sent with every request, the key sent as
the bearer token, and the form that is stored and shown (no user-info; the values of query parameters whose
names contain one of `SECRET_WORDS` replaced by `REDACTED`). A stored URL read back (to resume) has no
secrets left: its redacted parameters are not sent (`Address.withheld` names them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlparse

#: A query parameter whose name (lower-cased) contains one of these words has a secret value.
SECRET_WORDS = ("key", "token", "secret", "sig", "pass", "auth", "credential", "session", "jwt")
REDACTED = "[REDACTED]"


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


@dataclass(frozen=True)
class Address:
    """One endpoint URL, its secrets apart."""

    base: str
    """Where requests go: scheme, host, port and path (no user-info, no query)."""
    shown: str
    """What is stored and shown."""
    query: dict[str, str] = field(default_factory=dict)
    """Query parameters sent with every request (secret ones included)."""
    key: str | None = None
    """The key of the user-info (its password, else its user name), sent as the bearer token."""
    secrets: tuple[str, ...] = ()
    """Every secret of the URL (to redact from texts)."""
    withheld: tuple[str, ...] = ()
    """Query parameters whose values were redacted before (a stored URL): not sent."""


def address(url: str) -> Address:
    parsed = urlparse(url.strip())
    host = parsed.netloc.rpartition("@")[2]
    base = f"{parsed.scheme}://{host}{parsed.path}".rstrip("/")
    secrets: list[str] = []
    given = parsed.password or parsed.username
    key = unquote(given) if given else None
    if given and key:
        secrets.extend(dict.fromkeys((key, given)))
    query: dict[str, str] = {}
    shown: list[str] = []
    withheld: list[str] = []
    for name, value in parse_qsl(parsed.query, keep_blank_values=True):
        secret = is_secret_name(name)
        if secret and value == REDACTED:
            withheld.append(name)
            shown.append(f"{quote(name)}={REDACTED}")
            continue
        query[name] = value
        if secret and value:
            secrets.append(value)
        shown.append(f"{quote(name)}={REDACTED if secret else quote(value)}")
    visible = base + ("?" + "&".join(shown) if shown else "")
    return Address(base, visible, query, key, tuple(secrets), tuple(withheld))


def shown_url(base_url: str) -> str:
    """`base_url` (one URL or several, comma-separated) as it is stored and shown."""
    return ",".join(address(url).shown for url in split_urls(base_url))


def url_secrets(base_url: str) -> tuple[str, ...]:
    """The secrets the URLs of `base_url` carry."""
    return tuple(secret for url in split_urls(base_url) for secret in address(url).secrets)


def split_urls(base_url: str) -> list[str]:
    """``"http://a/v1,http://b/v1"`` -> both URLs (stripped, without trailing slashes, duplicates dropped)."""
    urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
    return list(dict.fromkeys(urls))


def check_urls(base_url: str) -> list[str]:
    urls = split_urls(base_url)
    if not urls:
        raise ValueError("--base-url is empty")
    for url in urls:
        parsed = urlparse(url)
        shown = address(url).shown
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {shown!r}")
        try:
            _ = parsed.port
        except ValueError:
            raise ValueError(f"--base-url has an invalid port: {shown!r}") from None
    return urls
