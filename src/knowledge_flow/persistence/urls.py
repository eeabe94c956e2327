"""Which store a ``--db`` names: an SQLite file (a path) or a PostgreSQL database (a URL), and how to show it.

A PostgreSQL URL is ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]`` (``postgres://`` and
``postgresql+psycopg://`` are accepted too). Its password is never shown: `shown` replaces it with ``***``.
Standard library only (the command line imports this before anything heavy).
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from knowledge_flow.persistence.files import check_db_path

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_URL = re.compile(r"^(?:postgresql|postgres)(?:\+psycopg)?://", re.IGNORECASE)
#: The password of a URL anywhere in a text: after ``scheme://user:`` and before the host's ``@``, or a
#: ``password=`` option.
_SECRET = re.compile(r"((?:postgresql|postgres)(?:\+psycopg)?://[^:/@\s]*:)[^\s/]*@", re.IGNORECASE)
_OPTION = re.compile(r"(\bpassword=)[^&\s]*", re.IGNORECASE)
MASK = "***"


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
    """`target` as it may be shown or logged: a URL's password masked, a path as it is."""
    return redact(str(target))


def redact(text: str) -> str:
    """`text` with the password of every database URL in it masked."""
    return _OPTION.sub(rf"\1{MASK}", _SECRET.sub(rf"\1{MASK}@", text))


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


__all__ = ["SCHEMES", "check_url", "database_key", "is_postgres", "libpq_url", "redact", "shown", "sqlalchemy_url"]
