"""Compression of what the database holds: checkpoint blobs and long rollout texts (zlib, standard library).

Reasoning traces compress about 3x, and a long evaluation stores tens of thousands of them. Small values
(under `MIN_BYTES`) and values that do not shrink are stored as they are, so old and new rows, compressed
and plain, are read back the same way.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

MIN_BYTES = 256
LEVEL = 6
SUFFIX = "+zlib"


def pack(data: bytes) -> bytes | None:
    """`data` compressed, or None when it is small or would not shrink."""
    if len(data) < MIN_BYTES:
        return None
    packed = zlib.compress(data, LEVEL)
    return packed if len(packed) < len(data) else None


class CompressingSerializer(SerializerProtocol):
    """LangGraph's serializer with compressed output: the type tag gains ``+zlib`` (as LangGraph's
    `EncryptedSerializer` adds its cipher), so checkpoints written without compression still load."""

    def __init__(self, serde: SerializerProtocol | None = None) -> None:
        self.serde = serde or JsonPlusSerializer()

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = self.serde.dumps_typed(obj)
        packed = pack(data)
        return (type_ + SUFFIX, packed) if packed is not None else (type_, data)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, payload = data
        if type_.endswith(SUFFIX):
            return self.serde.loads_typed((type_.removesuffix(SUFFIX), zlib.decompress(payload)))
        return self.serde.loads_typed(data)


class CompressedText(TypeDecorator[str]):
    """A text column whose long values are stored zlib-compressed (a BLOB); short ones stay TEXT.

    Reads accept both, so rows written before compression existed read back unchanged. SQL on such a
    column (``length(content)``, ``LIKE``) sees the compressed bytes: read texts through the store.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        packed = pack(value.encode("utf-8"))
        return packed if packed is not None else value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, bytes | bytearray | memoryview):
            return zlib.decompress(bytes(value)).decode("utf-8")
        return value  # type: ignore[no-any-return]


#: The first byte of packed confidences written as float32 (a zlib stream starts with 0x78: the float16 rows
#: written before hold no tag).
FLOAT32_TAG = b"F"


def pack_confidences(confidences: Sequence[float]) -> bytes:
    """Per-token confidences as stored: little-endian float32 (a relative precision of 6e-8, finer than the
    reference implementation's rounding to 3 decimals), zlib-compressed behind a one-byte tag."""
    return FLOAT32_TAG + zlib.compress(struct.pack(f"<{len(confidences)}f", *confidences), 6)


def unpack_confidences(blob: bytes) -> list[float]:
    """What `pack_confidences` stored, and the float16 rows written before (about 3 significant digits: 0.008
    apart at a confidence of 10)."""
    if blob[:1] == FLOAT32_TAG:
        raw = zlib.decompress(blob[1:])
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    raw = zlib.decompress(blob)
    return list(struct.unpack(f"<{len(raw) // 2}e", raw))
