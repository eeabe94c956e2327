"""Which store a ``--db`` names: an SQLite file (a path) or a PostgreSQL database (a URL), and how to show it.

A PostgreSQL URL is ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]`` (``postgres://`` and
``postgresql+psycopg://`` are accepted too). Its secrets (the password, and options whose names look secret,
as for endpoint URLs: `knowledge_flow.endpoint.urls.is_secret_name`) are never shown: `shown` replaces them
with `REDACTED`, and `db_secrets` gives them to the redaction of texts. Standard library only (the command line
imports this before anything heavy).
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from knowledge_flow.endpoint.urls import REDACTED, is_secret_name
from knowledge_flow.persistence.files import check_db_path

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_URL = re.compile(r"^(?:postgresql|postgres)(?:\+psycopg)?://", re.IGNORECASE)
#: A database URL anywhere in a text (up to white space or a quote).
_IN_TEXT = re.compile(r"(?:postgresql|postgres)(?:\+psycopg)?://[^\s'\"]+", re.IGNORECASE)
#: A secret ``name=value`` of a libpq connection string (``password=...``) in a text.
_OPTION = re.compile(r"\b([a-z_]+)=([^&\s'\"]*)", re.IGNORECASE)


def is_postgres(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and bool(_URL.match(target))


def check_url(url: str) -> str:
    """The URL, normalised to ``postgresql://``; ValueError (the password not shown) when it names no
    database."""
    parts = urlsplit(url)
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"database URL {shown(url)!r} names no host")
    if not parts.path.strip("/"):
        raise ValueError(f"database URL {shown(url)!r} names no database (postgresql://USER@HOST[:PORT]/DB)")
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def shown(target: str | os.PathLike[str]) -> str:
    """`target` as it may be shown or logged: a URL's password and secret options redacted, a path as it is.
    String operations only: a text shown once (brackets in it) is shown again unchanged."""
    text = str(target)
    if not is_postgres(text):
        return text
    scheme, _, rest = text.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if colon:
        netloc = f"{user}:{REDACTED}{at}{host}"
    path, question, query = tail.partition("?")
    options = "&".join(
        f"{name}={REDACTED}" if is_secret_name(name) and equals else f"{name}{equals}{value}"
        for name, equals, value in (item.partition("=") for item in query.split("&"))
    )
    return f"{scheme}://{netloc}{slash}{path}{question}{options if question else ''}"


def redact(text: str) -> str:
    """`text` with every database URL in it as `shown`, and secret ``name=value`` options redacted."""
    text = _IN_TEXT.sub(lambda found: shown(found.group(0)), text)
    return _OPTION.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_name(m.group(1)) else m.group(0), text)


def db_secrets(target: str | os.PathLike[str]) -> tuple[str, ...]:
    """The secrets a database URL carries (its password, the values of secret-looking options)."""
    text = str(target)
    if not is_postgres(text):
        return ()
    parts = urlsplit(text)
    found = [unquote(parts.password)] if parts.password else []
    found += [value for name, value in parse_qsl(parts.query) if is_secret_name(name) and value]
    return tuple(found)


def database_key(target: str | os.PathLike[str]) -> str:
    """A database as one string, checked: a PostgreSQL URL (`postgres.check_db_url`: reachable, not another
    program's) or an SQLite file's path (`files.check_db_path`)."""
    if is_postgres(target):
        from knowledge_flow.persistence.postgres import check_db_url

        return check_db_url(str(target))
    return str(check_db_path(target))


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy's PostgreSQL dialect with the psycopg 3 driver."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def libpq_url(url: str) -> str:
    """The URL as libpq (psycopg's connection string) reads it."""
    return "postgresql://" + url.split("://", 1)[1]


__all__ = [
    "SCHEMES",
    "check_url",
    "database_key",
    "db_secrets",
    "is_postgres",
    "libpq_url",
    "redact",
    "shown",
    "sqlalchemy_url",
]
