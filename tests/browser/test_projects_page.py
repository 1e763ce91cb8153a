"""A person creates, renames and deletes a project in a real browser."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.ray]

# The status strip's labels and the health field each stands for.
STRIP_PARTS = [("Ray", "ray"), ("DB", "database"), ("Disk", "workspace_writable")]


def test_create_list_delete_project(page, server):
    page.goto("/")
    assert page.url.endswith("/projects")
    page.fill("#create-project input[name=name]", "Browser cats")
    page.select_option("#create-project select[name=task]", "classification")
    page.click("#create-project button[type=submit]")
    page.wait_for_url(re.compile(r"/projects/proj-[0-9a-f]{12}/dataset$"))  # creating opens it (issue #13 item 12)
    page.goto("/projects")
    row = page.locator("#projects-table tr", has_text="Browser cats")
    row.wait_for()
    # the status strip: one dot per health part, each green exactly when the server says it is up
    page.locator("#status-strip .dot").nth(2).wait_for()
    health = server.http.get("/api/system/health").json()["data"]
    shown = page.evaluate("""() => [...document.querySelectorAll('#status-strip .dot')].map(
        d => [d.nextSibling.textContent.trim(), d.classList.contains('ok'), d.classList.contains('bad')])""")
    assert shown == [[label, health[part], not health[part]] for label, part in STRIP_PARTS]
    screenshot(page, "projects")

    page.on("dialog", lambda d: d.accept())
    row.locator("button.delete").click()
    row.wait_for(state="detached")
    assert not any(p["name"] == "Browser cats" for p in server.http.get("/api/projects").json()["data"]["items"])


def test_create_shows_validation_error(page):
    page.goto("/projects")
    page.evaluate("document.querySelector('#create-project input[name=name]').removeAttribute('required')")
    page.click("#create-project button[type=submit]")
    page.locator("#form-error", has_text="name: is required").wait_for()
    assert page.locator("#form-error").inner_text() == "name: is required"  # issue #13 item 13


def test_sign_in_form_returns_to_the_page_asked_for(browser, server):
    """Token mode: without the cookie a page sends the browser to /login; a wrong token stays there
    with an error; the right one returns to the page first asked for, and HTMX then loads its parts."""
    pid = server.http.post("/api/projects", json={"name": "Sign-in target", "task": "classification"}).json()["data"]["id"]
    ctx = browser.new_context(base_url=server.url)
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(20_000)
        pg.goto(f"/projects/{pid}/split")
        assert pg.url.endswith(f"/login?next=/projects/{pid}/split")
        pg.fill("input[name=token]", server.token + "-wrong")
        pg.click("form button[type=submit]")
        pg.locator(".error").wait_for()
        assert pg.url.endswith("/login") and not ctx.cookies()
        pg.fill("input[name=token]", server.token)
        pg.click("form button[type=submit]")
        pg.wait_for_url(f"**/projects/{pid}/split")
        pg.locator("#status-strip .dot.ok").first.wait_for()  # an HTMX request, authenticated by the cookie
        cookie = next(c for c in ctx.cookies() if c["name"] == "aistudio_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert pg.evaluate("document.cookie") == ""  # scripts can't read the token
    finally:
        ctx.close()
        server.http.delete(f"/api/projects/{pid}")
