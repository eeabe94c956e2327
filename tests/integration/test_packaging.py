"""The package builds without a warning of ours (`project.license` is an SPDX expression), and the wheel holds
what the installed package needs: the report's templates and the demo's problems."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_builds_without_warnings_and_with_its_data(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    # setuptools' warnings (`BuildBackendWarning: project.license as a TOML table is deprecated`, ...), not pip's
    # notes on its own configuration
    warnings = [
        line for line in output.splitlines() if re.search(r"Warning|[Dd]eprecat", line) and "Location '" not in line
    ]
    assert warnings == []
    (wheel,) = (tmp_path / "dist").glob("knowledge_flow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert "Provides-Extra: docs" in metadata.splitlines()
    for template in ("report.html.j2", "rollouts.html.j2", "style.css.j2"):
        assert f"knowledge_flow/templates/{template}" in names
    assert "knowledge_flow/data/gsm8k_demo.jsonl" in names
