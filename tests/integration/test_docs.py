"""The documentation site builds with `mkdocs build --strict` (what `make test` runs), and a broken anchor fails
the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_site_builds_strictly(tmp_path: Path) -> None:
    proc = build(REPO, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "kflow serve local" in cli and "--max-new-tokens" in cli  # generated from the commands
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "rollouts_frame" in api and "write_evaluation_report" in api  # from the docstrings


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    root.mkdir()
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(REPO / "docs", root / "docs")
    (root / "src").symlink_to(REPO / "src")
    page = root / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [the reports](reports.md#no-such-section).\n")
    proc = build(root, tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-section" in proc.stderr
