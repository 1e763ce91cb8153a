"""Issue #16: a person deploys an export from the Deploy page in a real browser — picks the export,
names the endpoint, keeps the API key the page shows once, sees it running with its URL, curl and
figures, uses "try it" (the prediction drawn: top-5 bars), and undeploys it.

The shared trained classifier and its ONNX export come through the HTTP API; only the page is driven.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.workflows import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.ray]

SHOTS = Path("/work/shots")


def shot(page, name):
    path = screenshot(page, name)
    if SHOTS.is_dir():
        shutil.copy(path, SHOTS / f"{name}.png")


@pytest.fixture(scope="module")
def onnx_export(server, trained_classifier):
    pid, _, eid = trained_classifier
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "onnx"})
    assert r.status_code == 202, r.text
    xid = r.json()["data"]["id"]
    export = wait_for(lambda: server.http.get(f"/api/export/{pid}/{xid}").json()["data"],
                      lambda e: e["status"] in ("completed", "failed"), timeout=600, every=0.5)
    assert export["status"] == "completed", export["error"]
    return pid, export


def test_deploy_from_the_page_and_try_it(page, server, onnx_export, tmp_path):
    pid, export = onnx_export
    name = f"page-{uuid.uuid4().hex[:6]}"
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/projects/{pid}/deploy")
    expect(page.locator(".tabs a.active")).to_have_text("Deploy")
    page.select_option("#deploy-export", export["id"])
    if not server.http.get("/api/system/gpu").json()["data"]["gpus"]:
        expect(page.locator("#deploy-gpu")).to_be_disabled()
    page.fill("#deploy-name", name)
    page.fill("#deploy-batch", "4")
    page.click("#deploy-submit")
    expect(page.locator("#key-box")).to_be_visible()
    key = page.locator("#key-value").inner_text()
    assert key.startswith("aisk_")
    endpoint = page.locator(f".endpoint[data-name='{name}']")
    expect(endpoint).to_have_attribute("data-status", "running", timeout=300_000)
    expect(endpoint.locator(".endpoint-url code")).to_have_text(f"{server.url}/models/{name}/predict")
    expect(endpoint.locator(".curl-text")).to_contain_text(f"Bearer {key}")

    image = server.http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
    (tmp_path / "img.jpg").write_bytes(server.http.get(image["url"]).content)
    page.select_option("#try-endpoint", name)
    expect(page.locator("#try-key")).to_have_value(key)  # filled in from the answer that created it
    page.set_input_files("#try-file", str(tmp_path / "img.jpg"))
    expect(page.locator("#try-result")).to_be_visible()
    expect(page.locator("#try-bars .bar-row.top .bar-name")).to_have_text(image["label"])
    expect(page.locator("#try-badge")).to_contain_text(image["label"])
    # the figures come back from the replica: the try-it request is counted
    expect(endpoint.locator(".figure").nth(1).locator("b")).to_have_text("1", timeout=30_000)
    page.locator("#try-card").scroll_into_view_if_needed()
    shot(page, "deploy-running")

    # a wrong key: the endpoint's 401 envelope in the try-it box
    page.fill("#try-key", "wrong")
    page.set_input_files("#try-file", str(tmp_path / "img.jpg"))
    expect(page.locator("#try-error")).to_contain_text("UNAUTHORIZED")
    expect(page.locator("#try-result")).to_be_hidden()

    page.once("dialog", lambda d: d.accept())
    endpoint.locator("button[data-action=undeploy]").click()
    expect(endpoint).to_have_count(0, timeout=60_000)
    expect(page.locator("#key-box")).to_be_hidden()
    shot(page, "deploy-after-undeploy")
    with server.anon() as anon:
        assert anon.post(f"/models/{name}/predict", content=b"x", headers={"Content-Type": "image/jpeg"}).status_code == 404
    assert not errors, errors
