import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (Debian's) per module; each test opens its own context."""
    # Playwright's sync API runs an event loop in this thread while it lives; the tests' own ORM calls are
    # still synchronous. Only while this module's browser lives: other modules keep Django's check.
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: make test installs it (apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()
    if before is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE")
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture
def new_context(browser):
    """Open browser contexts (each with its own cookies: one per user); all are closed after the test, and
    the test ends once the server has ended their push streams."""
    from .pages import close_and_wait_for_streams

    opened = []

    def new():
        opened.append(browser.new_context(viewport={"width": 1400, "height": 900}))
        return opened[-1]

    yield new
    close_and_wait_for_streams(opened)


@pytest.fixture
def context(new_context):
    return new_context()
