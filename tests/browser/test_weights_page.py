"""Issue #13 item 8 in the browser: on a fresh install "Download weights" beside Pretrained fetches
the task's weights with progress and then ticks Pretrained; an offline host gets a clear message;
the experiment list says "from scratch" or "pretrained". The weights host is a local HTTP server
(tests/api/test_weights_download.py's), the appliance the in-process app under uvicorn: the weights
download and these pages do not involve Ray."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.main import create_app
from ray_jobs.core.catalog import MODELS
from tests.api.test_weights_download import R18, WeightsHost, closed_port
from tests.ports import free_port
from tests.workflows import create_experiment, project_with_split

pytestmark = [pytest.mark.browser]
SHOTS = Path("/work/shots")


@contextlib.contextmanager
def appliance(tmp_path: Path, **overrides):
    import httpx
    import uvicorn

    (tmp_path / "imports").mkdir(exist_ok=True)
    settings = Settings(workspace=tmp_path / "ws", import_roots=[tmp_path / "imports"], api_token=None, **overrides)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(200):
                if server.started:
                    break
                threading.Event().wait(0.05)
            yield settings, http, url
    finally:
        server.should_exit = True
        thread.join(15)


def shot(page, name: str) -> None:
    if SHOTS.is_dir():
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_download_weights_from_the_training_page(browser, tmp_path):
    files = {spec.weights_file: f"{spec.name}-weights".encode() * 4000 for spec in MODELS.values()}
    host = WeightsHost(files)
    host.hold_half.add(R18)  # resnet18 (the selected model) stops half-way until released
    try:
        with appliance(tmp_path, weights_url=host.url, weights_verify=False) as (settings, http, url):
            pid, sid = project_with_split(http, settings.allowed_import_roots[0], per_class=6)
            create_experiment(http, pid, sid, name="Scratch run")  # pretrained off
            ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"/projects/{pid}/training")
            assert page.locator("#model-select").input_value() == "resnet18"
            assert not page.locator("#pretrained").is_checked()
            assert "not in the weights cache" in page.locator("#weights-hint").inner_text()
            assert page.locator(".exp-row", has_text="Scratch run").locator(".init").inner_text() == "from scratch"
            page.locator("#weights-download").wait_for()
            page.click("#weights-fetch")
            progress = page.locator("#weights-progress")
            progress.filter(has_text=f"{R18}: 0.0 MB / 0.1 MB (file 1 of 6)").wait_for()
            assert page.locator("#weights-fetch").is_disabled() and page.locator("#weights-bar").is_visible()
            shot(page, "edges-a-weights-progress")
            host.release.set()
            progress.filter(has_text="Downloaded 6 weights files.").wait_for()
            assert page.locator("#pretrained").is_checked()
            assert page.locator("#weights-hint").inner_text() == "(in the weights cache)"
            assert page.locator("#weights-bar").is_hidden() and page.locator("#weights-error").inner_text() == ""
            assert all((settings.weights_cache / MODELS[m].weights_file).is_file()
                       for m in ("resnet18", "resnet50", "convnext_tiny"))
            page.fill("#create-experiment input[name=name]", "Pretrained run")
            page.fill("#create-experiment input[name=batch_size]", "2")
            page.click("#create-experiment button[type=submit]")
            row = page.locator(".exp-row", has_text="Pretrained run")
            row.wait_for()
            assert row.locator(".init").inner_text() == "pretrained"
            shot(page, "edges-a-weights-done")
            ctx.close()
    finally:
        host.close()


def test_offline_download_says_so_on_the_page(browser, tmp_path):
    with appliance(tmp_path, weights_url=f"http://127.0.0.1:{closed_port()}/models") as (settings, http, url):
        pid = http.post("/api/projects", json={"name": "offline", "task": "detection"}).json()["data"]["id"]
        ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        page.goto(f"/projects/{pid}/training")
        page.click("#weights-fetch")
        error = page.locator("#weights-error")
        error.filter(has_text="looks offline").wait_for()
        text = error.inner_text()
        assert text.startswith("Download failed — ") and "could not reach 127.0.0.1:" in text, text
        assert str(settings.workspace) not in text
        assert not page.locator("#pretrained").is_checked() and page.locator("#weights-fetch").is_enabled()
        shot(page, "edges-a-weights-offline")
        ctx.close()
