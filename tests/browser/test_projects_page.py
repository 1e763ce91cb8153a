"""A person creates, renames and deletes a project in a real browser."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.ray]


def test_create_list_delete_project(page, server):
    page.goto("/")
    assert page.url.endswith("/projects")
    page.fill("#create-project input[name=name]", "Browser cats")
    page.select_option("#create-project select[name=task]", "classification")
    page.click("#create-project button[type=submit]")
    row = page.locator("#projects-table tr", has_text="Browser cats")
    row.wait_for()
    assert page.locator("#create-project input[name=name]").input_value() == ""
    page.locator("#status-strip .dot.ok").first.wait_for()  # Ray + DB health shown in the strip
    screenshot(page, "projects")

    page.on("dialog", lambda d: d.accept())
    row.locator("button.delete").click()
    row.wait_for(state="detached")
    assert not any(p["name"] == "Browser cats" for p in server.http.get("/api/projects").json()["data"]["items"])


def test_create_shows_validation_error(page):
    page.goto("/projects")
    page.evaluate("document.querySelector('#create-project input[name=name]').removeAttribute('required')")
    page.click("#create-project button[type=submit]")
    page.locator("#form-error", has_text="VALIDATION_ERROR").wait_for()
