"""Issue 13, items 6 and 12 (loose ends) in a real browser: the dataset page opened with
`?split_id=…&subset=…` (the Split page's Browse link) or `?label=…` shows only those images on page
load, and the Split page's "as imported" suggestion goes once that split is created."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.fixtures import create_project, import_and_wait, list_all_images, make_classification_folder

pytestmark = [pytest.mark.browser, pytest.mark.ray]

SHOTS = Path("/work/shots")
GRID_IDS = "() => [...document.querySelectorAll('#image-grid .thumb')].map(t => t.dataset.imageId).sort()"


def shot(page, name: str) -> None:
    path = screenshot(page, name)
    if SHOTS.is_dir():
        shutil.copy(path, SHOTS / f"{name}.png")


def grid_shows(page, ids: set[str]) -> None:
    page.wait_for_function(f"want => JSON.stringify(({GRID_IDS})()) === JSON.stringify(want)",
                           arg=sorted(ids), timeout=20_000)


def test_url_filters_apply_on_load_and_the_suggestion_goes(page, server, tmp_path):
    http = server.http
    pid = create_project(http, "classification", name="Preselect")
    gen = make_classification_folder(server.import_root / f"pre-{tmp_path.name}", classes=("red", "blue"),
                                     per_class=6, size=32, nested=True)
    assert import_and_wait(http, pid, gen.root)["added"] == 12
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # The Split page: create the split as imported there; the suggestion makes way for a note.
    page.goto(f"/projects/{pid}/split")
    page.click("#create-split-source button[type=submit]")
    expect(page.locator("#split-list article.split", has_text="as imported")).to_be_visible()
    expect(page.locator("#as-imported-card")).to_be_hidden()
    split = next(s for s in http.get(f"/api/splits/{pid}").json()["data"] if s["from_source"])
    page.reload()
    expect(page.locator("#as-imported-note")).to_contain_text("as imported")
    assert page.locator("#as-imported-card").count() == 0
    shot(page, "polish-split-note")

    # Browse link of that split → the dataset page with the split preselected.
    val = {im["id"] for im in list_all_images(http, pid, split_id=split["id"], subset="val")}
    assert len(val) == 2
    page.goto(f"/projects/{pid}/dataset?split_id={split['id']}&subset=val")
    grid_shows(page, val)
    expect(page.locator("#filter-split")).to_have_value(split["id"])
    expect(page.locator("#filter-subset")).to_have_value("val")
    page.wait_for_function("() => [...document.querySelectorAll('#image-grid .thumb img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shot(page, "polish-dataset-preselect")

    red = {im["id"] for im in list_all_images(http, pid, label="red")}
    page.goto(f"/projects/{pid}/dataset?label=red")
    grid_shows(page, red)
    expect(page.locator("#filter-label")).to_have_value("red")
    assert errors == []
