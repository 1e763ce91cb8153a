"""Issue #12 item 12 in the browser: sign in through the form, press Log out: back at /login, the
cookie gone, and a copy of it put back into a fresh browser no longer opens a page."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.ray]


def test_log_out_in_the_browser(browser, server):
    ctx = browser.new_context(base_url=server.url)
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    pg.goto("/projects")
    pg.fill("input[name=token]", server.token)
    pg.click("form button[type=submit]")
    pg.wait_for_url("**/projects")
    (cookie,) = ctx.cookies()
    assert cookie["name"] == "aistudio_session" and cookie["value"] != server.token
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    pg.click("header form#logout button")
    pg.wait_for_url("**/login")
    assert ctx.cookies() == []
    pg.goto("/projects")
    assert "/login?next=/projects" in pg.url
    ctx.close()

    replay = browser.new_context(base_url=server.url)
    replay.add_cookies([{k: cookie[k] for k in ("name", "value", "domain", "path")}])
    pg = replay.new_page()
    pg.goto("/projects")
    assert "/login?next=/projects" in pg.url
    replay.close()
