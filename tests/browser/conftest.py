"""Headless Debian Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def signed_in(browser, server) -> dict:
    """The browser state of a user who signed in once through the real /login form (the server
    runs in token mode): its HttpOnly cookie authenticates pages, HTMX, fetch and EventSource."""
    ctx = browser.new_context(base_url=server.url)
    pg = ctx.new_page()
    pg.goto("/projects")  # no cookie yet: the app sends the browser to its sign-in form
    assert "/login?next=/projects" in pg.url, pg.url
    pg.fill("input[name=token]", server.token)
    pg.click("form button[type=submit]")
    pg.wait_for_url("**/projects")
    state = ctx.storage_state()
    ctx.close()
    assert [c["name"] for c in state["cookies"]] == ["aistudio_session"]
    return state


def signed_in_page(browser, server, signed_in, width: int = 1280, height: int = 900):
    """For a fixture (`yield from signed_in_page(...)`): a page of a fresh signed-in context at this
    viewport size, closed afterwards."""
    ctx = browser.new_context(base_url=server.url, viewport={"width": width, "height": height}, storage_state=signed_in)
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()


@pytest.fixture
def page(browser, server, signed_in):
    yield from signed_in_page(browser, server, signed_in)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
