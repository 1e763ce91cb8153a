"""Issue #13, items 10-12 (the pages' rough edges), in a real browser:
- item 10: the stored boxes drawn over detection thumbnails, where the objects are; a detection
  confusion matrix (12 classes + background) fully visible in its card at 1400 px;
- item 11: "Mixed precision (GPU)" unticked and disabled on a CPU-only host (and a run created
  there says so); TensorRT not selectable where the host refuses it;
- item 12: creating a project opens it; the dataset filter, page and open image, and the open
  evaluation, survive a reload and Back; no page scrolls sideways at 400 px.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.fixtures import create_project, list_all_images, make_classification_folder, make_detection_coco
from tests.host import cuda_available, tensorrt_usable
from tests.browser.conftest import signed_in_page
from tests.workflows import import_folder, project_with_split

pytestmark = [pytest.mark.browser, pytest.mark.ray]

SHOTS = "edges-b"


@pytest.fixture
def wide_page(browser, server, signed_in):
    yield from signed_in_page(browser, server, signed_in, 1400, 900)


@pytest.fixture
def narrow_page(browser, server, signed_in):
    yield from signed_in_page(browser, server, signed_in, 400, 800)


@pytest.fixture(scope="module")
def detection_project(server):
    pid = create_project(server.http, "detection", name="Boxes on thumbnails")
    source = make_detection_coco(server.import_root / "edges-b-boxes", n=6, size=80, classes=("red", "blue"))
    import_folder(server.http, pid, source.root)
    return pid


@pytest.fixture(scope="module")
def many_images(server):
    """Two classes × 50 tiny images: a class filter still has two grid pages (48 a page)."""
    pid = create_project(server.http, "classification", name="Many images")
    source = make_classification_folder(server.import_root / "edges-b-many", classes=("red", "blue"), per_class=50, size=16)
    import_folder(server.http, pid, source.root)
    return pid


def test_boxes_drawn_on_detection_thumbnails(wide_page, server, detection_project):
    page, pid = wide_page, detection_project
    images = {im["id"]: im for im in list_all_images(server.http, pid)}
    page.goto(f"/projects/{pid}/dataset")
    thumbs = page.locator("#image-grid .thumb[data-image-id]")
    expect(thumbs).to_have_count(len(images))
    for i in range(thumbs.count()):
        thumb = thumbs.nth(i)
        image = images[thumb.get_attribute("data-image-id")]
        rects = thumb.locator("svg.thumb-boxes rect")
        expect(rects).to_have_count(len(image["boxes"]))
        img = thumb.locator("img").bounding_box()
        for j, box in enumerate(image["boxes"]):
            drawn = rects.nth(j).bounding_box()
            # Square images on square thumbnails: the box is where its pixels are, scaled.
            scale = img["width"] / image["width"]
            assert drawn["x"] - img["x"] == pytest.approx(box["x1"] * scale, abs=2.5), (image, drawn, img)
            assert drawn["y"] - img["y"] == pytest.approx(box["y1"] * scale, abs=2.5), (image, drawn, img)
            assert drawn["width"] == pytest.approx((box["x2"] - box["x1"]) * scale, abs=3.5)
            assert drawn["height"] == pytest.approx((box["y2"] - box["y1"]) * scale, abs=3.5)
            assert rects.nth(j).get_attribute("data-label") == box["label"]
    screenshot(page, f"{SHOTS}-thumbnail-boxes")
    page.locator("#browse-card").screenshot(path=f"/work/shots/{SHOTS}-thumbnail-boxes.png")


def _detection_confusion(classes: int) -> dict:
    labels = [f"class-{i:02d}" for i in range(classes)] + ["background"]
    n = len(labels)
    matrix = [[(3 if i == j else 1) if not (i == j == n - 1) else 0 for j in range(n)] for i in range(n)]
    return {"task": "detection", "confusion_matrix": {"labels": labels, "matrix": matrix, "iou_threshold": 0.5,
                                                      "score_threshold": 0.25}}


def test_detection_confusion_matrix_fits_its_card_at_1400(wide_page, detection_project):
    """The page's own renderer and stylesheet draw a 12-class detection matrix; the background
    column (the last) must be inside the card, not scrolled out of sight."""
    page = wide_page
    page.goto(f"/projects/{detection_project}/evaluation")
    page.evaluate("""async (metrics) => {
        const { renderConfusion } = await import('/static/js/evaluation/metrics.js');
        document.querySelector('#detail-card').hidden = false;
        document.querySelector('#detail-body').hidden = false;
        renderConfusion(metrics);
    }""", _detection_confusion(12))
    background = page.locator("#confusion-table th.col-label.bg-label")
    expect(background).to_have_text("background")
    fits = page.evaluate("""() => {
        const box = document.querySelector('#confusion'), table = document.querySelector('#confusion-table');
        const card = document.querySelector('#detail-card').getBoundingClientRect();
        const bg = document.querySelector('#confusion-table th.bg-label.col-label').getBoundingClientRect();
        const total = table.querySelector('thead th.total').getBoundingClientRect();
        return {scroll: table.scrollWidth, room: box.clientWidth, bgRight: bg.right, totalRight: total.right,
                boxRight: box.getBoundingClientRect().right, cardRight: card.right};
    }""")
    assert fits["scroll"] <= fits["room"], fits  # nothing to scroll to: every column is shown
    assert fits["totalRight"] <= fits["boxRight"] <= fits["cardRight"], fits
    page.locator("#detail-card").screenshot(path=f"/work/shots/{SHOTS}-confusion-1400.png")


def test_mixed_precision_off_without_a_gpu(wide_page, server):
    if cuda_available():
        pytest.skip("this host has a GPU: mixed precision is offered")
    pid, sid = project_with_split(server.http, server.import_root, per_class=4)
    page = wide_page
    page.goto(f"/projects/{pid}/training")
    amp = page.locator("#mixed-precision")
    expect(amp).not_to_be_checked()
    expect(amp).to_be_disabled()
    expect(page.locator("#amp-reason")).to_contain_text("no GPU")
    form = page.locator("#create-experiment")
    form.locator("input[name=name]").fill("cpu run")
    form.locator("input[name=batch_size]").fill("2")
    form.locator("input[name=pretrained]").uncheck()
    form.locator("button[type=submit]").click()
    expect(page.locator("#experiments-table tr.exp-row", has_text="cpu run")).to_have_count(1)
    exp = next(e for e in server.http.get(f"/api/training/{pid}/experiments").json()["data"] if e["name"] == "cpu run")
    assert exp["params"]["mixed_precision"] is False


def test_tensorrt_not_selectable_where_refused(wide_page, detection_project):
    if tensorrt_usable():
        pytest.skip("TensorRT can build engines on this host")
    page = wide_page
    page.goto(f"/projects/{detection_project}/export")
    trt = page.locator("#export-form input[name=format][value=tensorrt]")
    expect(trt).to_be_disabled()
    expect(page.locator("#tensorrt-reason")).to_contain_text(re.compile("not installed|no GPU"))
    expect(page.locator("#export-form input[name=format][value=onnx]")).to_be_checked()


def test_creating_a_project_opens_it(wide_page, server):
    page = wide_page
    page.goto("/projects")
    page.fill("#create-project input[name=name]", "Opened at once")
    page.click("#create-project button[type=submit]")
    page.wait_for_url(re.compile(r"/projects/proj-[0-9a-f]{12}/dataset$"))
    expect(page.locator("#project-name")).to_have_text("Opened at once")


def test_filter_page_and_open_image_survive_reload_and_back(wide_page, server, many_images):
    page, pid = wide_page, many_images
    page.goto(f"/projects/{pid}/dataset")
    page.select_option("#filter-label", "red")
    expect(page.locator("#grid-range")).to_contain_text("of 50")
    page.click("#grid-next")
    expect(page.locator("#grid-range")).to_contain_text("Images 49–50 of 50")
    thumb = page.locator("#image-grid .thumb[data-image-id]").first
    image_id = thumb.get_attribute("data-image-id")
    title = thumb.get_attribute("title")
    thumb.click()
    expect(page.locator("#image-modal")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"label=red.*cursor=[A-Za-z0-9_-]+.*image={image_id}"))  # keyset (#14)

    def kept():
        expect(page.locator("#filter-label")).to_have_value("red")
        expect(page.locator("#grid-range")).to_contain_text("Images 49–50 of 50")
        expect(page.locator("#image-modal")).to_be_visible()
        expect(page.locator("#viewer-title")).to_have_text(title)

    page.reload()
    kept()
    page.goto(f"/projects/{pid}/split")
    page.go_back()
    kept()
    page.click("#viewer-close")
    expect(page).not_to_have_url(re.compile("image="))
    expect(page).to_have_url(re.compile("cursor="))  # the keyset page (issue #14)


def test_open_evaluation_lives_in_the_url(wide_page, trained_classifier, server):
    pid, _sid, eid = trained_classifier
    r = server.http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": "test"})
    assert r.status_code == 202, r.text
    ev_id = r.json()["data"]["id"]
    page = wide_page
    page.goto(f"/projects/{pid}/evaluation")
    page.locator(f'#evaluations-table tr.eval-row[data-evaluation-id="{ev_id}"]').click()
    expect(page.locator("#detail-card")).to_have_attribute("data-status", "completed", timeout=120_000)
    expect(page).to_have_url(re.compile(f"evaluation={ev_id}"))
    page.reload()
    expect(page.locator("#detail-card")).to_be_visible()
    expect(page.locator("#detail-card")).to_have_attribute("data-evaluation-id", ev_id)
    expect(page.locator("#detail-card")).to_have_attribute("data-status", "completed")


def test_no_sideways_scroll_at_400px(narrow_page, server, detection_project, many_images):
    page = narrow_page
    paths = ["/projects"] + [f"/projects/{pid}/{section}" for pid in (detection_project, many_images)
                             for section in ("dataset", "split", "training", "evaluation", "export")]
    for path in paths:
        page.goto(path)
        page.wait_for_load_state("networkidle")
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], (path, widths)
    for name, path in (("projects", "/projects"), ("dataset", f"/projects/{detection_project}/dataset"),
                       ("training", f"/projects/{many_images}/training")):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=f"/work/shots/{SHOTS}-{name}-400.png", full_page=True)
