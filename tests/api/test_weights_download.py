"""Issue #13 item 8: pretrained weights from the page. `POST /api/weights` downloads the catalog's
files in the background with progress (the function `aistudio fetch-weights` calls), against a
real local HTTP server standing in for the weights host: the file lands in the cache and Pretrained
can be used; a closed port (an offline host) gives a clear message; a file whose SHA-256 does not
match its name is not kept. No test here reaches the internet."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from appliance.config import Settings, get_settings
from appliance.main import create_app
from ray_jobs.core.catalog import MODELS
from tests.workflows import project_with_split

R18 = MODELS["resnet18"].weights_file  # resnet18-f37072fd.pth
SMALL = MODELS["mobilenet_v3_small"].weights_file


class WeightsHost:
    """A threaded HTTP server serving `files` (name → bytes); a name in `hold` waits for `release`
    before answering, one in `hold_half` sends half its bytes and then waits."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.hold, self.hold_half, self.release, self.requests = files, set(), set(), threading.Event(), []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                name = self.path.rsplit("/", 1)[-1]
                host.requests.append(self.path)
                if name in host.hold:
                    host.release.wait(30)
                data = host.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if name in host.hold_half:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    host.release.wait(30)
                    data = data[len(data) // 2:]
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights_host():
    host = WeightsHost({R18: b"r18-weights" * 5000, SMALL: b"small-weights" * 3000})
    yield host
    host.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def app_client(settings: Settings, **overrides) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides)))


def wait_download(client, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get("/api/weights").json()["data"]
        if data["download"]["status"] != "running":
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.05)


def available(data: dict) -> dict[str, bool]:
    return {m["name"]: m["available"] for m in data["models"]}


def test_download_from_a_reachable_host_fills_the_cache_with_progress(settings, weights_host):
    with app_client(settings, weights_url=weights_host.url, weights_verify=False) as c:
        before = c.get("/api/weights?task=classification").json()["data"]
        assert before["download"] is None and before["source"] == weights_host.url.split("/")[2]
        assert not any(available(before).values())
        r = c.post("/api/weights", json={"models": ["mobilenet_v3_small", "resnet18"]})
        assert r.status_code == 202, r.text
        done = wait_download(c)
        job = done["download"]
        assert job["status"] == "completed", job
        assert job["models"] == ["mobilenet_v3_small", "resnet18"]  # the caller's order
        assert job["files_done"] == job["files_total"] == 2 and job["error"] is None
        assert job["bytes_done"] == job["bytes_total"] == len(weights_host.files[R18])
        assert available(done)["resnet18"] and available(done)["mobilenet_v3_small"]
        assert not available(done)["resnet50"]
        cache = settings.weights_cache
        assert (cache / R18).read_bytes() == weights_host.files[R18]
        assert not list(cache.glob("*.part"))
        # a file already in the cache is not fetched again
        seen = len(weights_host.requests)
        assert c.post("/api/weights", json={"models": ["resnet18"]}).status_code == 202
        assert wait_download(c)["download"]["models"] == [] and len(weights_host.requests) == seen
        # and the training page now offers Pretrained for it
        page = c.get(f"/projects/{c.post('/api/projects', json={'name': 'w', 'task': 'classification'}).json()['data']['id']}/training").text
        assert re.search(r'value="resnet18"[^>]*data-weights="yes"', page)
        assert re.search(r'value="resnet50"[^>]*data-weights="no"', page)


def test_an_offline_host_gives_a_clear_message_and_keeps_nothing(settings):
    url = f"http://127.0.0.1:{closed_port()}/models"
    with app_client(settings, weights_url=url) as c:
        assert c.post("/api/weights", json={"models": ["resnet18"]}).status_code == 202
        job = wait_download(c)["download"]
    assert job["status"] == "failed" and job["files_done"] == 0
    message = job["error"]
    assert message.startswith(f"{R18}: could not reach 127.0.0.1:") and "looks offline" in message, message
    assert "AISTUDIO_WEIGHTS_URL" in message and "from scratch" in message
    assert str(settings.workspace) not in message  # no server path
    assert not list(settings.weights_cache.glob("*"))


def test_an_unresolvable_host_is_offline_too(settings):
    with app_client(settings, weights_url="http://weights.invalid/models") as c:
        assert c.post("/api/weights", json={"models": ["resnet18"]}).status_code == 202
        job = wait_download(c)["download"]
    assert job["status"] == "failed" and "could not reach weights.invalid" in job["error"], job


def test_a_file_whose_checksum_does_not_match_its_name_is_not_kept(settings, weights_host):
    assert not hashlib.sha256(weights_host.files[R18]).hexdigest().startswith("f37072fd")
    with app_client(settings, weights_url=weights_host.url) as c:  # weights_verify defaults to on
        c.post("/api/weights", json={"models": ["resnet18"]})
        job = wait_download(c)["download"]
    assert job["status"] == "failed" and "SHA-256" in job["error"] and "f37072fd" in job["error"], job
    assert not list(settings.weights_cache.glob("*"))


def test_a_missing_file_on_the_host_names_the_http_error(settings, weights_host):
    with app_client(settings, weights_url=weights_host.url, weights_verify=False) as c:
        c.post("/api/weights", json={"models": ["resnet50"]})
        job = wait_download(c)["download"]
    assert job["status"] == "failed" and "HTTP 404" in job["error"], job


def test_bad_requests_and_one_download_at_a_time(settings, weights_host):
    weights_host.hold.add(R18)
    with app_client(settings, weights_url=weights_host.url, weights_verify=False) as c:
        for body, fragment in [({"models": ["nope"]}, "models: unknown model 'nope'"),
                               ({"models": "resnet18"}, "models"), ({"model": ["resnet18"]}, "model"),
                               ({"models": [1]}, "models.0")]:
            r = c.post("/api/weights", json=body)
            assert r.status_code == 422 and fragment in r.json()["error"]["message"], (body, r.text)
        assert c.get("/api/weights?task=segmentation").status_code == 422
        assert c.post("/api/weights", json={"models": ["resnet18"]}).status_code == 202
        second = c.post("/api/weights", json={"models": ["mobilenet_v3_small"]})
        assert second.status_code == 409 and "already running" in second.json()["error"]["message"]
        weights_host.release.set()
        assert wait_download(c)["download"]["status"] == "completed"


def test_pretrained_without_weights_says_how_to_get_them(client, settings):
    pid, sid = project_with_split(client, settings.allowed_import_roots[0], per_class=6)
    body = {"name": "e", "split_id": sid, "model": "resnet18", "epochs": 1, "batch_size": 2, "pretrained": True}
    message = client.post(f"/api/training/{pid}/experiments", json=body).json()["error"]["message"]
    assert message.startswith("pretrained: ") and "Download weights" in message and "from scratch" in message
    assert R18 in message and str(settings.workspace) not in message, message


def test_cli_fetch_weights_shares_the_download(tmp_path, weights_host, monkeypatch):
    from appliance.cli import cli

    monkeypatch.setenv("AISTUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("AISTUDIO_WEIGHTS_VERIFY", "false")
    get_settings.cache_clear()
    try:
        ok = CliRunner().invoke(cli, ["fetch-weights", "--dest", str(tmp_path / "w"), "--model", "resnet18",
                                      "--url", weights_host.url])
        assert ok.exit_code == 0, ok.output
        assert (tmp_path / "w" / R18).read_bytes() == weights_host.files[R18]
        offline = CliRunner().invoke(cli, ["fetch-weights", "--dest", str(tmp_path / "w"), "--model", "mobilenet_v3_small",
                                           "--url", f"http://127.0.0.1:{closed_port()}"])
        assert offline.exit_code == 1 and "looks offline" in offline.output, offline.output
    finally:
        get_settings.cache_clear()
