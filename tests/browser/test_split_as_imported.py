"""Issue #13 item 6 (and item 2's warnings) in a real browser: a dataset with its own train/ and
valid/ folders is imported from the Dataset page, the Split page suggests the split "as imported",
the user creates it there, and a 1-epoch run trains on it (Ray Train for real, 32 px images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.fixtures import create_project, make_classification_folder

pytestmark = [pytest.mark.browser, pytest.mark.ray]

TRAIN_TIMEOUT_MS = 180_000  # Ray Train start-up alone takes 20-40 s on a small CPU host
SHOTS = Path("/work/shots")


def shot(page, name: str) -> None:
    path = screenshot(page, name)
    if SHOTS.is_dir():  # the helpers' review folder, where it exists
        shutil.copy(path, SHOTS / f"{name}.png")


def test_import_own_split_create_as_imported_and_train(page, server, tmp_path):
    http = server.http
    pid = create_project(http, "classification", name="Own split")
    gen = make_classification_folder(server.import_root / f"own-{tmp_path.name}", classes=("red", "blue"),
                                     per_class=6, size=32, nested=True)
    (gen.root / "val").rename(gen.root / "valid")  # Roboflow's name for val
    expected = {item.relpath.replace("val/", "valid/", 1): item.subset for item in gen.items}
    assert sorted(expected.values()).count("val") == 2

    page.goto(f"/projects/{pid}/dataset")
    page.fill("#import-path-form input[name=source_path]", str(gen.root))
    page.click("#import-path-form button[type=submit]")
    page.locator("#import-job[data-status=completed]").wait_for(timeout=30_000)
    page.locator("#summary-images", has_text="12").wait_for()

    # The Split page suggests the imported subsets first.
    page.goto(f"/projects/{pid}/split")
    card = page.locator("#as-imported-card")
    expect(card).to_contain_text("train 10")
    expect(card).to_contain_text("val 2")
    expect(page.locator("#split-form-card h2")).to_have_text("Or a new split by ratios")
    assert page.evaluate("document.querySelector('#as-imported-card').compareDocumentPosition("
                         "document.querySelector('#split-form-card')) & Node.DOCUMENT_POSITION_FOLLOWING")
    expect(page.locator("#create-split-source input[name=name]")).to_have_value("as imported")
    shot(page, "splits-suggestion")
    page.click("#create-split-source button[type=submit]")
    article = page.locator("#split-list article.split", has_text="as imported")
    expect(article.locator("tfoot th[data-subset]")).to_have_text(["10", "2", "0"])
    split = next(s for s in http.get(f"/api/splits/{pid}").json()["data"] if s["from_source"])
    assert split["counts"]["total"] == {"train": 10, "val": 2, "test": 0} and split["warnings"] == []
    assert page.locator("#split-source-error").inner_text() == ""
    for sub in ("train", "val"):
        r = http.get(f"/api/datasets/{pid}/images", params={"split_id": split["id"], "subset": sub, "limit": 100})
        assert {im["original_name"] for im in r.json()["data"]["items"]} == {p for p, s in expected.items() if s == sub}

    # A split by ratios too small for its test share: the warning shows with the split.
    page.fill("#create-split input[name=name]", "too small")
    page.fill("#create-split input[name=train]", "0.9")
    page.fill("#create-split input[name=val]", "0.05")
    page.fill("#create-split input[name=test]", "0.05")
    page.click("#create-split button[type=submit]")
    small = page.locator("#split-list article.split", has_text="too small")
    small.wait_for()
    warned = next(s for s in http.get(f"/api/splits/{pid}").json()["data"] if s["name"] == "too small")
    assert warned["warnings"], warned
    expect(small.locator(".split-warnings li")).to_have_text(warned["warnings"])
    shot(page, "splits-warning")

    # Train 1 epoch on the split as imported.
    page.goto(f"/projects/{pid}/training")
    form = page.locator("#create-experiment")
    form.locator("input[name=name]").fill("On the imported split")
    form.locator("select[name=split_id]").select_option(split["id"])
    form.locator("select[name=model]").select_option("resnet18")
    form.locator("input[name=epochs]").fill("1")
    form.locator("input[name=batch_size]").fill("4")
    form.locator("input[name=image_size]").fill("32")
    form.locator("input[name=pretrained]").uncheck()
    form.locator("button[type=submit]").click()
    row = page.locator("#experiments-table tr.exp-row", has_text="On the imported split")
    expect(row.locator(".exp-status")).to_have_text("created")
    exp = next(e for e in http.get(f"/api/training/{pid}/experiments").json()["data"]
               if e["name"] == "On the imported split")
    assert exp["split_id"] == split["id"]
    row.locator("button.start").click()
    try:
        page.wait_for_function(
            """() => document.querySelector('#live-panel').dataset.points === '1'
                     && document.querySelector('#live-status').textContent.trim() === 'completed'""",
            timeout=TRAIN_TIMEOUT_MS,
        )
    except Exception:
        record = http.get(f"/api/training/{pid}/experiments/{exp['id']}").json()
        log = http.get(f"/api/training/{pid}/experiments/{exp['id']}/logs").text
        pytest.fail(f"the run on the split as imported did not complete: {record}\n--- log ---\n{log}")
    done = http.get(f"/api/training/{pid}/experiments/{exp['id']}").json()["data"]
    assert done["status"] == "completed" and done["epochs_done"] == 1
    assert sorted(done["class_names"]) == ["blue", "red"]
