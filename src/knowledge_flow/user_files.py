"""Files and text a user hands the tool (prompt sets, datasets, model files, a problem on standard input): read
only from regular files, never more than a size limit, and decoded as UTF-8 or refused with one clear message.

`/dev/zero`, a FIFO, a folder, a socket or a device would otherwise hang a read or fill the memory; a file is
opened without blocking (a FIFO put in place of a checked file cannot stall the open), checked on the open
descriptor, and read up to its limit plus one byte, so a file that grows meanwhile is refused too.
Standard library only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

#: A prompt set is a few kilobytes of templates; the built-in ones are under 30 KB.
MAX_PROMPT_SET_BYTES = 1 << 20
#: A local dataset file (JSON lines, JSON or Parquet) read into memory before it is parsed.
MAX_DATASET_BYTES = 256 << 20
#: One problem's text (read from standard input or a dataset): far beyond any served context.
MAX_PROBLEM_BYTES = 4 << 20


class UserFileError(ValueError):
    """A file or text that cannot be used; the message says why."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "something other than a regular file"


def size_text(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB" if count >= 1 << 20 else f"{count / 1024:.0f} KiB"


def require_regular(path: Path, what: str) -> os.stat_result:
    """The status of `path` (links followed); UserFileError unless it is an existing regular file."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise UserFileError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise UserFileError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(status.st_mode):
        raise UserFileError(f"{what} {str(path)!r} is not a file: it is {_kind(status.st_mode)}")
    return status


def read_limited(handle: BinaryIO, limit: int, what: str) -> bytes:
    """At most `limit` bytes of `handle`; UserFileError when there are more."""
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise UserFileError(f"{what} is larger than {size_text(limit)}")
    return data


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    require_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise UserFileError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):  # replaced between the check and the open
            raise UserFileError(f"{what} {str(path)!r} is not a file: it is {_kind(status.st_mode)}")
        if status.st_size > limit:
            raise UserFileError(f"{what} {str(path)!r} is larger than {size_text(limit)}")
        try:
            return read_limited(handle, limit, f"{what} {str(path)!r}")
        except OSError as exc:
            raise UserFileError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def decode_utf8(data: bytes, what: str) -> str:
    """`data` as UTF-8 text (a leading byte-order mark dropped); UserFileError naming the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserFileError(f"{what} is not UTF-8 text (byte {exc.start})") from None


def read_text(path: Path, limit: int, what: str) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes."""
    return decode_utf8(read_bytes(path, limit, what), f"{what} {str(path)!r}")


def check_text(text: str, what: str) -> str:
    """`text` when it can be stored as UTF-8: a command-line argument with bytes that are not UTF-8 reaches
    Python as lone surrogates, which no database or file can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserFileError(f"{what} is not UTF-8 text (character {exc.start})") from None
    return text


def check_problem(text: str, what: str = "the problem") -> str:
    """A problem's text when it can be stored (UTF-8) and is not larger than `MAX_PROBLEM_BYTES`."""
    check_text(text, what)
    if len(text.encode("utf-8")) > MAX_PROBLEM_BYTES:
        raise UserFileError(f"{what} is larger than {size_text(MAX_PROBLEM_BYTES)}")
    return text
