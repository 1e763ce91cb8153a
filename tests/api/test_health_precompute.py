"""Issue 13, item 7 (loose end): the near-duplicate groups are computed in the import lane after
each import, so the dataset summary answers from the cache and the first page view after an import
never pays for them; while they are still being computed the summary says `pending` (and the page
"checking…") instead of waiting."""

from __future__ import annotations

import random
import threading

import pytest

from appliance.services import health
from appliance.store.db import session_scope
from tests.fixtures import class_image, create_project, import_and_wait, save_image
from tests.htmlq import parse


@pytest.fixture
def imported(client, settings) -> str:
    """A project with 6 imported images."""
    src = settings.allowed_import_roots[0] / "pairs"
    for i in range(5):
        save_image(class_image((40 * i, 200 - 30 * i, 90), 48, random.Random(i), noise=0.35), src / "a" / f"{i}.jpg")
    save_image(class_image((200, 200, 20), 48, random.Random(9), noise=0.0), src / "b" / "copy.png")
    pid = create_project(client)
    assert import_and_wait(client, pid, src, "folder")["status"] == "completed"
    # The import lane runs one job at a time: once a no-op queued behind the import has run, the
    # import's follow-up work (precomputing the groups) is done.
    client.app.state.runner.submit("import", lambda: None).result(timeout=60)
    return pid


def test_summary_after_an_import_answers_from_the_precomputed_groups(client, imported, monkeypatch):
    calls = []
    monkeypatch.setattr(health, "_build", lambda *a: calls.append(a) or pytest.fail("grouping recomputed in the request"))
    summary = client.get(f"/api/datasets/{imported}").json()["data"]
    assert calls == []
    assert summary["health"]["pending"] is False
    assert summary["near_duplicate_groups"] == summary["health"]["near_duplicate_groups"] == 0
    assert summary["health"]["near_duplicate_images"] == 0
    page = parse(client.get(f"/projects/{imported}/dataset").text)
    assert page.select_one("#health-near-groups").text.strip() == "0"
    assert calls == []


def test_while_the_groups_are_computed_the_summary_says_pending_without_waiting(client, settings, imported, monkeypatch):
    """A large project (here: any size) whose cache is stale: the request starts the build in the
    background and answers at once; the page shows "checking…" and asks again."""
    release = threading.Event()
    real_build = health._build

    def slow_build(*args):
        assert release.wait(timeout=60)
        return real_build(*args)

    monkeypatch.setattr(health, "SYNC_BUILD_MAX", 0)
    monkeypatch.setattr(health, "_build", slow_build)
    health._CACHE.clear()  # as after images changed
    try:
        summary = client.get(f"/api/datasets/{imported}").json()["data"]
        h = summary["health"]
        assert h["pending"] is True and summary["near_duplicate_groups"] is None and h["near_duplicate_images"] is None
        assert h["unhashed_images"] == 0 and h["tiny_images"] == 0
        fragment = parse(client.get(f"/api/datasets/{imported}", headers={"HX-Request": "true"}).text)
        cell = fragment.select_one("#health-near-groups")
        assert cell.text.strip() == "checking…"
        assert cell.attrs["hx-get"] == f"/api/datasets/{imported}" and "load" in cell.attrs["hx-trigger"]
        page = parse(client.get(f"/projects/{imported}/dataset").text)
        assert page.select_one("#health-near-groups").text.strip() == "checking…"
        with session_scope(settings.db_url) as s:
            build = health.building(s, imported, settings.near_duplicate_distance)
        assert build is not None  # one build, started by the first request, shared by the others
    finally:
        release.set()
    build.result(timeout=60)
    summary = client.get(f"/api/datasets/{imported}").json()["data"]
    assert summary["health"]["pending"] is False and summary["near_duplicate_groups"] == 0
