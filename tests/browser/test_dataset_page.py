"""A person imports a dataset (ZIP upload and server path), browses it, looks at an image with its
boxes, and splits it — in a real browser against the real Serve deployment."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot
from tests.fixtures import (
    create_project,
    list_all_images,
    make_classification_folder,
    make_detection_coco,
    zip_dir,
)

pytestmark = [pytest.mark.browser, pytest.mark.ray]

ALL_THUMBS_LOADED = """n => {
  const imgs = [...document.querySelectorAll('#image-grid .thumb img')];
  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def wait_thumbs_loaded(page, n: int) -> None:
    page.locator("#image-grid").scroll_into_view_if_needed()
    page.wait_for_function(ALL_THUMBS_LOADED, arg=n, timeout=20_000)


def test_upload_zip_browse_and_view_boxes(page, server, tmp_path):
    pid = create_project(server.http, "detection", name="Browser shapes")
    gen = make_detection_coco(tmp_path / "shapes", n=10, size=96, classes=("red", "blue", "green"))
    archive = zip_dir(gen.root, tmp_path / "shapes.zip")

    page.goto(f"/projects/{pid}/dataset")
    assert page.locator("#summary-images").inner_text() == "0"
    page.click(".seg-toggle [data-mode=upload]")
    assert page.locator("#import-path-form").is_hidden()
    page.set_input_files("#import-upload-form input[type=file]", str(archive))
    page.click("#import-upload-form button[type=submit]")

    job = page.locator("#import-job[data-status=completed]")
    job.wait_for(timeout=30_000)
    assert job.locator(".progress > div").evaluate("e => e.style.width") == "100%"
    assert job.locator(".added").inner_text() == "10"
    assert "Auto-detected COCO" in job.locator(".detected").inner_text()
    # the finished import refreshed the summary and the grid
    page.locator("#summary-images", has_text="10").wait_for()
    assert page.locator("#summary-boxes").inner_text() == "10"
    # the chart is drawn once htmx has settled the swapped summary, a moment after its text is in
    page.wait_for_function("() => !!Chart.getChart(document.getElementById('class-chart'))", timeout=5_000)
    page.locator("#image-grid .thumb").nth(9).wait_for()
    assert page.locator("#image-grid .thumb").count() == 10
    wait_thumbs_loaded(page, 10)
    assert page.locator("#filter-label option").count() == 4  # all + 3 classes, rebuilt after the import
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "dataset-detection")

    # the image view draws the image's boxes, scaled to the displayed size
    first = page.locator("#image-grid .thumb").first
    image_id = first.get_attribute("data-image-id")
    record = server.http.get(f"/api/datasets/{pid}/images/{image_id}").json()["data"]
    first.click()
    modal = page.locator("#image-modal")
    modal.wait_for(state="visible")
    page.wait_for_function("() => { const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth > 0; }")
    boxes = page.locator("#viewer-boxes .box")
    assert boxes.count() == len(record["boxes"]) == 1
    assert boxes.first.locator(".box-label").inner_text() == record["boxes"][0]["label"]
    img = page.locator("#viewer-img").bounding_box()
    drawn = boxes.first.bounding_box()
    scale = img["width"] / record["width"]
    assert img["width"] > record["width"]  # shown enlarged, and the box follows
    want = record["boxes"][0]
    assert abs(drawn["x"] - (img["x"] + want["x1"] * scale)) < 2
    assert abs(drawn["y"] - (img["y"] + want["y1"] * scale)) < 2
    assert abs(drawn["width"] - (want["x2"] - want["x1"]) * scale) < 2
    screenshot(page, "image-view")

    # delete it from the view: the grid and the summary follow
    page.once("dialog", lambda d: d.accept())
    page.click("#viewer-delete")
    modal.wait_for(state="hidden")
    page.locator("#summary-images", has_text="9").wait_for()
    page.locator(f"#image-grid .thumb[data-image-id='{image_id}']").wait_for(state="detached")
    assert page.locator("#image-grid .thumb").count() == 9
    assert server.http.get(f"/api/datasets/{pid}/images/{image_id}").status_code == 404


def test_path_import_filter_and_split(page, server, tmp_path):
    pid = create_project(server.http, "classification", name="Browser colours")
    gen = make_classification_folder(server.import_root / f"colours-{tmp_path.name}", classes=("red", "blue"), per_class=12)

    page.goto(f"/projects/{pid}/dataset")
    page.fill("#import-path-form input[name=source_path]", str(gen.root))
    page.select_option("#import-path-form select[name=format]", "folder")
    page.click("#import-path-form button[type=submit]")
    page.locator("#import-job[data-status=completed]").wait_for(timeout=30_000)
    page.locator("#summary-images", has_text="24").wait_for()
    page.locator("#image-grid .thumb").nth(23).wait_for()
    wait_thumbs_loaded(page, 24)

    # class filter
    page.select_option("#filter-label", "red")
    page.locator("#grid-range", has_text="of 12").wait_for()
    assert page.locator("#image-grid .thumb").count() == 12
    assert set(page.locator("#image-grid .thumb .cap").all_inner_texts()) == {"red"}
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "dataset-classification")

    # an import error is shown next to the form
    page.fill("#import-path-form input[name=source_path]", "/definitely/not/allowed")
    page.click("#import-path-form button[type=submit]")
    page.locator("#import-error", has_text="source_path: the folder is outside the allowed import roots").wait_for()

    # split page: a ratio error, then a split with its counts table
    page.goto(f"/projects/{pid}/split")
    page.fill("#create-split input[name=name]", "first split")
    page.fill("#create-split input[name=train]", "0.5")
    page.click("#create-split button[type=submit]")
    page.locator("#split-error", has_text="sum to 1").wait_for()
    assert "VALIDATION_ERROR" not in page.locator("#split-error").inner_text()  # issue #13 item 13: words, no code

    page.fill("#create-split input[name=train]", "0.5")
    page.fill("#create-split input[name=val]", "0.25")
    page.fill("#create-split input[name=test]", "0.25")
    page.fill("#create-split input[name=seed]", "7")
    page.click("#create-split button[type=submit]")
    table = page.locator("#split-list article.split table.counts")
    table.wait_for()
    assert page.locator("#split-error").inner_text() == ""
    split = server.http.get(f"/api/splits/{pid}").json()["data"][0]
    assert split["name"] == "first split" and split["seed"] == 7
    for cls in ("red", "blue"):
        cells = table.locator(f"tr[data-class={cls}] td[data-subset]").all_inner_texts()
        assert cells == ["6", "3", "3"] == [str(split["counts"]["per_class"][s][cls]) for s in ("train", "val", "test")]
    assert table.locator("tfoot th[data-subset]").all_inner_texts() == ["12", "6", "6"]
    screenshot(page, "split")

    # Browse from the split: the dataset page opens filtered on that split
    page.click(f"article.split[data-split-id='{split['id']}'] a:has-text('Browse')")
    page.wait_for_url(f"**/projects/{pid}/dataset?split_id={split['id']}")
    page.select_option("#filter-subset", "val")
    page.locator("#grid-range", has_text="subset val").wait_for()
    val_ids = set(page.locator("#image-grid .thumb").evaluate_all("els => els.map(e => e.dataset.imageId)"))
    assert val_ids == {im["id"] for im in list_all_images(server.http, pid, split_id=split["id"], subset="val")}
    assert len(val_ids) == 6

    # delete the split (confirmed)
    page.goto(f"/projects/{pid}/split")
    page.once("dialog", lambda d: d.accept())
    page.click("article.split button.delete-split")
    page.locator("#split-list", has_text="No splits yet").wait_for()
    assert server.http.get(f"/api/splits/{pid}").json()["data"] == []
