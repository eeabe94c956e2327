"""A real headless Chromium (Debian's `chromium` package) for tests of the HTML report.

`make test` installs it when it is missing and sets `KFLOW_REQUIRE_CHROMIUM=1`: then a missing browser fails
the tests that need one instead of skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

#: A console message as Chromium logs it with ``--enable-logging=stderr --v=0``.
CONSOLE = re.compile(r":INFO:CONSOLE[^\]]*\] (.*)")


def chromium() -> str:
    """The browser's path; skips (or fails, when KFLOW_REQUIRE_CHROMIUM=1) without one."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium is not installed (`apt-get install chromium`; `make test` installs it)"
    if os.environ.get("KFLOW_REQUIRE_CHROMIUM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Rendered:
    dom: str
    """The document after rendering (``--dump-dom``)."""
    console: list[str]
    """Console messages the page produced (errors, uncaught exceptions, ``console.*`` calls)."""
    screenshot: Path


def render(page: Path, screenshot: Path, width: int = 1400, height: int = 2400) -> Rendered:
    """Open `page` in headless Chromium twice: once to dump the rendered DOM (with console logging), once for a
    screenshot."""
    browser = chromium()
    base = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={screenshot.parent / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={width},{height}",
    ]
    url = page.resolve().as_uri()
    dumped = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-3000:]
    console = [m.group(1) for line in (dumped.stderr + shot.stderr).splitlines() if (m := CONSOLE.search(line))]
    return Rendered(dumped.stdout, console, screenshot)


class Elements(HTMLParser):
    """Tags with their attributes, and the ids, of a document."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.ids: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.tags.append((tag, values))
        if "id" in values:
            self.ids.add(values["id"])

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def screenshot_is_not_blank(path: Path) -> dict[str, float]:
    """Figures of the screenshot: its size, the share of non-white pixels and of coloured (plot) pixels."""
    import numpy
    from PIL import Image

    with Image.open(path) as image:
        pixels = numpy.asarray(image.convert("RGB"), dtype=numpy.int16)
    height, width, _ = pixels.shape
    ink = float((pixels.min(axis=2) < 235).mean())
    colour = float((pixels.max(axis=2) - pixels.min(axis=2) > 60).mean())
    return {"width": width, "height": height, "ink": ink, "colour": colour}
