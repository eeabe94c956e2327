from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from knowledge_flow.server_launch.model_files import MODEL_FILE, ModelError, ensure_model


def make_parts(tmp_path: Path) -> tuple[list[Path], bytes]:
    chunks = [b"alpha" * 100, b"beta" * 50, b"gamma"]
    parts = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i}.bin"
        path.write_bytes(chunk)
        parts.append(path)
    return parts, b"".join(chunks)


def test_assembles_in_order_and_verifies(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    target = ensure_model(
        tmp_path / "cache", parts=parts, expected_size=len(whole), expected_sha256=hashlib.sha256(whole).hexdigest()
    )
    assert target.name == MODEL_FILE
    assert target.read_bytes() == whole
    # a second call trusts the verified file without the parts
    again = ensure_model(
        tmp_path / "cache", parts=[], expected_size=len(whole), expected_sha256=hashlib.sha256(whole).hexdigest()
    )
    assert again == target


def test_refuses_wrong_hash_and_leaves_nothing(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    with pytest.raises(ModelError, match="sha256"):
        ensure_model(tmp_path / "cache", parts=parts, expected_size=len(whole), expected_sha256="0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


def test_refuses_wrong_size(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    with pytest.raises(ModelError, match="bytes"):
        ensure_model(tmp_path / "cache", parts=parts[:-1], expected_size=len(whole), expected_sha256="0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupted_cached_file_is_rebuilt(tmp_path: Path) -> None:
    parts, whole = make_parts(tmp_path)
    digest = hashlib.sha256(whole).hexdigest()
    target = ensure_model(tmp_path / "cache", parts=parts, expected_size=len(whole), expected_sha256=digest)
    target.write_bytes(b"x" * len(whole))  # same size, different content
    target.with_suffix(".sha256").unlink()
    rebuilt = ensure_model(tmp_path / "cache", parts=parts, expected_size=len(whole), expected_sha256=digest)
    assert rebuilt.read_bytes() == whole
