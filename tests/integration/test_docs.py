"""The documentation site builds with `mkdocs build --strict` (what `make test` runs), and a broken anchor fails
the build."""

from __future__ import annotations

import os
import re
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


def slug(heading: str) -> str:
    """The anchor MkDocs' table of contents gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def test_the_readme_is_a_landing_page_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    setup = text.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in setup.splitlines() if line.strip()]
    assert commands == [["make", "demo"], ["make", "test"]]  # the two set-up commands, both Makefile targets
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    nav = (REPO / "mkdocs.yml").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", text)
    assert len(links) >= 15
    for path, anchor in links:
        page = REPO / path
        assert page.is_file(), path
        assert f": {page.name}" in nav, f"{path} is not in the site's navigation"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, (path, anchor)
