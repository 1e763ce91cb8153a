"""Issue #13 items 9 and 13 in the browser: `/docs` renders its operation list with every request
to anything but the appliance blocked, and no page of the appliance logs a 404 (the favicon was
one on every page)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import screenshot
from tests.workflows import project_with_split

pytestmark = [pytest.mark.browser, pytest.mark.ray]
SHOTS = Path("/work/shots")


def _only_the_appliance(context, base_url: str) -> list[str]:
    """Abort every request that leaves the appliance; return the list of those tried."""
    blocked: list[str] = []

    def handle(route):
        url = route.request.url
        if url.startswith(base_url) or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", handle)
    return blocked


def _save(page, name: str) -> None:
    path = screenshot(page, name)
    if SHOTS.is_dir():
        shutil.copy(path, SHOTS / f"{name}.png")


def test_docs_render_offline(page, server):
    blocked = _only_the_appliance(page.context, server.url)
    page.goto("/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() > 20
    assert page.locator(".opblock-summary-path", has_text="/api/projects").count() >= 1
    assert blocked == []
    _save(page, "edges-a-docs")


def test_no_page_logs_a_404(page, server):
    pid, _ = project_with_split(server.http, server.import_root, per_class=4)
    blocked = _only_the_appliance(page.context, server.url)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    pages = ["/projects", "/docs"] + [f"/projects/{pid}/{s}" for s in ("dataset", "split", "training", "evaluation", "export")]
    for url in pages:
        page.goto(url)
        page.wait_for_load_state("networkidle")
    # the favicon request is made apart from the page's: ask for it as the browser does
    assert page.request.get("/favicon.ico").status == 200
    assert problems == [] and blocked == [], problems + blocked
