"""Chromium driven by Playwright (sync API) against a real server and worker.

Browser tests run in their own pytest invocation (``-m browser``): Playwright's event
loop can disturb asyncio tests that run after it in the same process.
"""

import os
from pathlib import Path
from typing import Any, Iterator, List
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("POETS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("no Chromium at {} (apt-get install -y chromium, or set POETS_CHROMIUM)".format(CHROMIUM))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Watch:
    """What a page did that a test must fail on: console errors, page errors, other hosts."""

    def __init__(self, page: Any, origin: str) -> None:
        self.origin = urlsplit(origin).netloc
        self.problems: List[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append("page error: {}".format(error)))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append("console error: {} at {}".format(message.text, message.location))

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob"):
            return
        if parts.netloc != self.origin:
            self.problems.append("request to another host: {}".format(request.url))

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


def screenshot(page: Any, name: str, full_page: bool = False, tallest: int = 0) -> None:
    """docs/console-NAME.png when POETS_SCREENSHOTS names a folder (e.g. docs); else nothing.

    ``full_page`` takes the whole page, not just the viewport (a phone's pages are long), down
    to ``tallest`` px when that is set (a page of photos would make a heavy picture)."""
    folder = os.environ.get("POETS_SCREENSHOTS")
    if not folder:
        return
    target = Path(folder) if os.path.isabs(folder) else REPO / folder
    target.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # let transitions and lazy thumbnails settle
    # Toasts fade by themselves; in a picture they would only hide the page under them.
    clip = None
    if full_page and tallest:
        height = page.evaluate("document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": min(height, tallest)}
    # Hidden through the CSSOM: Playwright's ``style=`` adds a <style> element, which the
    # console's Content-Security-Policy refuses (and the page watch counts as an error).
    toasts = "(display) => { const t = document.getElementById('toasts'); if (t) t.style.display = display; }"
    page.evaluate(toasts, "none")
    try:
        page.screenshot(path=str(target / "console-{}.png".format(name)), full_page=full_page, clip=clip)
    finally:
        page.evaluate(toasts, "")
