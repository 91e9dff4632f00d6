"""Headless Chromium for report tests: render a page, screenshot it, and collect what it logged to the console.

Chromium 156 (Debian's) logs every console message, whatever its level, at INFO as `INFO:CONSOLE:<line>] "<text>",
source: <url> (<line>)`, and an uncaught exception the same way, its text starting "Uncaught". herd's reports have
no script, so any console line at all is an error."""

import subprocess
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
)


def render(page: Path, shot: Path) -> list[str]:
    """Screenshot `page` into `shot`; the console lines Chromium logged."""
    proc = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={shot.parent / 'chromium-profile'}", f"--screenshot={shot}",
                           "--window-size=1200,2000", "--enable-logging=stderr", "--v=0", page.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def colours(shot: Path) -> dict[tuple[int, int, int], int]:
    image = Image.open(shot).convert("RGB")
    return {colour: n for n, colour in image.getcolors(maxcolors=image.width * image.height)}
