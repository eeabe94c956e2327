"""The packaged model for vLLM: the embedded Qwen2.5-Coder-0.5B-Instruct GGUF, converted once to bf16 safetensors.

vLLM (0.32) cannot load GGUF files, so the verified GGUF (``model_files.ensure_model``) is converted by
``gguf_convert.py`` with the vLLM environment's interpreter (transformers, torch, gguf and accelerate) into a
folder beside it, ``qwen2.5-coder-0.5b-instruct-bf16/``. The folder appears complete or not at all (written
beside it, then renamed), is verified against its ``kflow-convert.json`` record (source SHA-256, every file's
size) before each use, and is reused while it verifies. One conversion runs at a time (a lock file).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from knowledge_flow.context import LOCAL_MODEL_ALIAS
from knowledge_flow.server_launch.model_files import MODEL_SHA256, cache_dir, ensure_model
from knowledge_flow.server_launch.process import ServerError

PACKAGED_MODEL = "qwen2.5-coder-0.5b"
SERVED_NAME = LOCAL_MODEL_ALIAS
CONVERTED_NAME = "qwen2.5-coder-0.5b-instruct-bf16"
CONVERT_SCRIPT = Path(__file__).with_name("gguf_convert.py")
MARKER = "kflow-convert.json"
FORMAT_VERSION = 1


def converted_dir(models_dir: Path | None = None) -> Path:
    return (models_dir or cache_dir() / "models") / CONVERTED_NAME


def verify_converted(folder: Path) -> str | None:
    """Why `folder` is not a usable conversion of the packaged model, or None when it is."""
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return f"{folder / MARKER} is missing or unreadable"
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        return f"{folder / MARKER} has another format"
    if record.get("source_sha256") != MODEL_SHA256:
        return f"{folder} was converted from another model file"
    files = record.get("files")
    if not isinstance(files, dict) or not any(str(name).endswith(".safetensors") for name in files):
        return f"{folder / MARKER} lists no weights"
    for name, size in files.items():
        path = folder / str(name)
        if not path.is_file() or path.stat().st_size != size:
            return f"{path} is missing or has another size than when it was written"
    return None


def ensure_converted_model(
    python: str,
    *,
    models_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    timeout_s: float = 1800.0,
) -> Path:
    """The folder of the converted packaged model, converting it with `python` first when needed."""
    say = progress or (lambda _message: None)
    folder = converted_dir(models_dir)
    if verify_converted(folder) is None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".{CONVERTED_NAME}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting: wait for it, then look again
        problem = verify_converted(folder)
        if problem is None:
            return folder
        if folder.exists():
            say(f"converting again: {problem}")
            shutil.rmtree(folder)
        gguf = ensure_model(target_dir=models_dir, progress=progress)
        say(f"converting {gguf.name} to bf16 safetensors for vLLM (once; about a minute): {folder}")
        command = [python, str(CONVERT_SCRIPT), str(gguf), str(folder), "--source-sha256", MODEL_SHA256]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerError(f"converting the packaged model with {python} failed: {exc}") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise ServerError(
                f"converting the packaged model with {python} failed (exit {done.returncode}); it needs "
                f"transformers, torch, gguf and accelerate:\n{tail}"
            )
        problem = verify_converted(folder)
        if problem is not None:
            raise ServerError(f"the converted model does not verify: {problem}")
    return folder
