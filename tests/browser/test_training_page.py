"""A person creates an experiment, starts it and watches it train live, in a real browser.

The project, its dataset and its split are set up through the HTTP API; only the training page
is driven through the UI. Training runs on Ray Train for real (CPU, 2 epochs, 32 px images).
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.fixtures import make_classification_folder

pytestmark = [pytest.mark.browser, pytest.mark.ray]

TRAIN_TIMEOUT_MS = 180_000  # Ray Train start-up alone takes 20-40 s on a small CPU host


def _data(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()["data"]


@pytest.fixture(scope="module")
def project(server):
    """A classification project with 2 classes × 10 solid-colour 32 px images and a 0.6/0.2/0.2 split."""
    http = server.http
    proj = _data(http.post("/api/projects", json={"name": "Training page", "task": "classification"}), 201)
    source = make_classification_folder(server.import_root / "training-page", classes=("red", "blue"),
                                        per_class=10, size=32)
    job = _data(http.post("/api/datasets/import/local",
                          json={"project_id": proj["id"], "source_path": str(source.root), "format": "folder"}), 202)
    deadline = time.monotonic() + 60
    while job["status"] not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"import did not finish: {job}"
        time.sleep(0.3)
        job = _data(http.get(f"/api/datasets/{proj['id']}/imports/{job['id']}"))
    assert job["status"] == "completed", job
    split = _data(http.post(f"/api/splits/{proj['id']}",
                            json={"name": "60/20/20", "train": 0.6, "val": 0.2, "test": 0.2, "seed": 1}), 201)
    return {"id": proj["id"], "split_id": split["id"]}


def test_create_start_and_watch_a_run(page, server, project):
    pid = project["id"]
    page.goto(f"/projects/{pid}/training")
    form = page.locator("#create-experiment")
    expect(page.locator("#no-split")).to_have_count(0)
    # The catalog offers this task's models only, with parameter counts and default sizes.
    options = form.locator("select[name=model] option")
    expect(options.filter(has_text="mobilenet_v3_small")).to_contain_text("M params")
    expect(options.filter(has_text="fasterrcnn")).to_have_count(0)
    expect(form.locator("select[name=split_id]")).to_have_value(project["split_id"])

    form.locator("input[name=name]").fill("Tiny mobilenet")
    form.locator("select[name=model]").select_option("mobilenet_v3_small")
    expect(form.locator("input[name=image_size]")).to_have_value("224")  # the model's default
    form.locator("input[name=epochs]").fill("2")
    form.locator("input[name=batch_size]").fill("4")
    form.locator("input[name=image_size]").fill("32")
    form.locator("input[name=pretrained]").uncheck()  # tests never need weights
    form.locator("button[type=submit]").click()

    row = page.locator("#experiments-table tr.exp-row", has_text="Tiny mobilenet")
    expect(row.locator(".exp-status")).to_have_text("created")
    exp = next(e for e in _data(server.http.get(f"/api/training/{pid}/experiments")) if e["name"] == "Tiny mobilenet")
    assert exp["params"]["image_size"] == 32 and exp["params"]["batch_size"] == 4 and exp["epochs"] == 2
    assert exp["params"]["augmentations"] == ["hflip"] and exp["params"]["pretrained"] is False

    row.locator("button.start").click()
    try:
        page.wait_for_function(
            """() => document.querySelector('#live-panel').dataset.points === '2'
                     && document.querySelector('#live-status').textContent.trim() === 'completed'""",
            timeout=TRAIN_TIMEOUT_MS,
        )
    except Exception:
        record = server.http.get(f"/api/training/{pid}/experiments/{exp['id']}").json()
        log = server.http.get(f"/api/training/{pid}/experiments/{exp['id']}/logs").text
        screenshot(page, "training-timeout")
        pytest.fail(f"the run did not show as completed with 2 points: {record}\n--- log ---\n{log}")

    assert page.evaluate("trainingPage.charts.loss.data.datasets.map(d => d.data.length)") == [2, 2]
    assert page.evaluate("trainingPage.charts.metric.data.datasets[0].data.length") == 2
    expect(page.locator("#log-tail")).to_contain_text("epoch 2/2")
    expect(page.locator("#live-epoch")).to_have_text("2 / 2")
    expect(row.locator(".exp-status")).to_have_text("completed")
    expect(row.locator("button.extend")).to_be_visible()
    expect(row.locator("button.start")).to_have_count(0)
    expect(row).to_have_class("exp-row selected")
    screenshot(page, "training")


def test_form_shows_validation_error(page, server, project):
    pid = project["id"]
    page.goto(f"/projects/{pid}/training")
    form = page.locator("#create-experiment")
    form.locator("input[name=name]").fill("Too big a batch")
    form.locator("input[name=batch_size]").fill("500")  # the train subset has 12 images
    form.locator("button[type=submit]").click()
    expect(page.locator("#new-experiment-card .error")).to_contain_text("larger than the train subset")
    expect(page.locator("#new-experiment-card .error")).to_contain_text("batch_size")
    assert not any(e["name"] == "Too big a batch" for e in _data(server.http.get(f"/api/training/{pid}/experiments")))
