"""Row seals: a digest of every value a stored row holds, so that a damaged database is found out, not read.

SQLite checks the structure of its file, not the values in it: a flipped bit in a token count, a finish
reason or a stored answer, or a row deleted by hand, would otherwise give wrong figures without a word. Each
row of runs, rollouts, calls, evaluations and evaluation problems carries a ``seal``: the SHA-256 (128 bits)
of its values *as stored* (compressed texts as their compressed bytes, so checking a seal decompresses
nothing). Writes through the store set it (an update re-seals the row, after checking the old seal);
`check_seal` tells whether a row read raw still matches. A rollout also records how many rollouts its
iteration has (``iteration_rollouts``), so a rollout deleted from an iteration breaks the others' check.
Rows written before seals existed (schema 5 and older) have none and are not checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Column, Connection, Table
from sqlalchemy.orm import DeclarativeBase

from knowledge_flow.persistence.compression import CompressedText

SEAL = "seal"
#: Columns no seal covers: the seal itself, and the time of the last write (it changes with every write). A
#: table names more in its ``info["unsealed"]``: ``kf_runs`` mirrors its run's status, iterations and final
#: answer from the checkpoint, which is their source (`knowledge_flow.runs.from_checkpoints` mends them).
UNSEALED = frozenset({SEAL, "updated_at"})


class StoreDamaged(RuntimeError):
    """Stored rows are missing, altered or unreadable; the message says which."""


def table_of(model: type[DeclarativeBase]) -> Table:
    """The table of an ORM model."""
    return cast(Table, model.__table__)


def sealed_columns(table: Table) -> list[Column[Any]]:
    """The columns `table`'s seal covers, in table order (empty for a table without a seal column)."""
    if SEAL not in table.columns:
        return []
    skipped = UNSEALED | set(table.info.get("unsealed", ()))
    return [column for column in table.columns if column.key not in skipped]


def stored_form(column: Column[Any], value: Any) -> Any:
    """`value` as SQLite stores it in `column` (what a raw read returns)."""
    if value is None and column.default is not None and getattr(column.default, "is_scalar", False):
        value = column.default.arg  # type: ignore[attr-defined]
    if value is None:
        return None
    if isinstance(column.type, CompressedText):
        return column.type.process_bind_param(value, None)  # type: ignore[arg-type]
    if isinstance(value, bool):
        return int(value)
    return value


def digest(values: Iterable[Any]) -> str:
    """The seal of a row's stored values."""
    hasher = hashlib.sha256()
    for value in values:
        if value is None:
            hasher.update(b"n;")
        elif isinstance(value, bool | int):
            hasher.update(b"i%d;" % int(value))
        elif isinstance(value, float):
            hasher.update(b"f" + value.hex().encode() + b";")
        elif isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            hasher.update(b"b%d:" % len(data) + data)
        else:
            data = str(value).encode("utf-8", "surrogatepass")
            hasher.update(b"s%d:" % len(data) + data)
    return hasher.hexdigest()[:32]


def seal_values(table: Table, values: Mapping[str, Any]) -> str:
    """The seal of a row whose stored values (by column key) are `values`."""
    return digest(values.get(column.key) for column in sealed_columns(table))


def seal_row(row: DeclarativeBase) -> None:
    """Set the seal of a new ORM row from its attributes (defaults as the insert will apply them)."""
    table = table_of(type(row))
    stored = {column.key: stored_form(column, getattr(row, column.key, None)) for column in sealed_columns(table)}
    setattr(row, SEAL, seal_values(table, stored))


def check_seal(table: Table, raw: Mapping[str, Any]) -> bool:
    """Whether a row read raw (column key -> stored value, the seal included) matches its seal; a row
    without a seal (written before seals existed) passes."""
    seal = raw.get(SEAL)
    return seal is None or seal == seal_values(table, raw)


def select_raw(
    connection: Connection, table: Table, where: str, parameters: Sequence[Any] | Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of `table` as stored (compressed texts as bytes), every column, by a WHERE clause with ``?``
    parameters."""
    names = [column.key for column in table.columns if column.key not in _DEFERRED]
    names += [column.key for column in table.columns if column.key in _DEFERRED]
    listed = ", ".join(f'"{name}"' for name in names)
    result = connection.exec_driver_sql(f"SELECT {listed} FROM {table.name} WHERE {where}", tuple(parameters))
    return [dict(zip(names, row, strict=True)) for row in result]


_DEFERRED = frozenset({"token_confidence"})


def reseal(connection: Connection, table: Table, key: Mapping[str, Any], what: str, values: dict[str, Any]) -> None:
    """Add the new seal to `values` (an update of the row whose primary key is `key`), after checking that
    the row as stored still matches its seal (a damaged row is never sealed again)."""
    touched = {column.key for column in sealed_columns(table)} & set(values)
    if not touched:
        return
    where = " AND ".join(f'"{name}" = ?' for name in key)
    rows = select_raw(connection, table, where, list(key.values()))
    if not rows:
        raise KeyError(f"no {what}")
    current = rows[0]
    if not check_seal(table, current):
        raise StoreDamaged(f"the stored {what} was altered (its seal does not match); restore the file from a copy")
    columns = {column.key: column for column in table.columns}
    merged = {**current, **{name: stored_form(columns[name], value) for name, value in values.items()}}
    values[SEAL] = seal_values(table, merged)


__all__ = [
    "SEAL",
    "StoreDamaged",
    "check_seal",
    "digest",
    "reseal",
    "seal_row",
    "seal_values",
    "sealed_columns",
    "select_raw",
    "stored_form",
    "table_of",
]
