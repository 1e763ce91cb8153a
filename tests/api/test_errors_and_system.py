"""Envelope for framework errors, token auth, and the system routes (in-process, no Ray)."""

from __future__ import annotations

import sqlite3

from fastapi.testclient import TestClient

from appliance.store.db import SCHEMA_VERSION
from appliance.main import create_app


def test_unknown_route_and_method_are_enveloped(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = client.put("/api/projects")
    assert r.status_code == 405 and r.json()["status"] == "error"


def test_unhandled_exception_is_500_with_request_id_and_no_trace(settings):
    app = create_app(settings)

    @app.get("/api/boom")
    def boom():
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/boom")
    body = r.json()
    assert r.status_code == 500 and body["error"]["code"] == "INTERNAL"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.headers["x-request-id"] in body["error"]["message"]


def test_health_without_ray_is_503_naming_ray(client, monkeypatch):
    # Another test of this session may have started Ray in this process: take it away here.
    monkeypatch.setattr("appliance.services.system.ray_is_up", lambda: False)
    r = client.get("/api/system/health")
    assert r.status_code == 503
    body = r.json()
    assert body["error"]["code"] == "UNAVAILABLE" and "ray" in body["error"]["message"]
    assert body["data"]["database"] is True and body["data"]["workspace_writable"] is True


def test_gpu_never_crashes(client):
    data = client.get("/api/system/gpu").json()["data"]
    assert isinstance(data["gpus"], list)
    if not data["gpus"]:
        assert data["reason"]


def test_workspace_and_jobs(client):
    pid = client.post("/api/projects", json={"name": "a", "task": "detection"}).json()["data"]["id"]
    data = client.get("/api/system/workspace").json()["data"]
    assert data["free_bytes"] > 0 and [p["project_id"] for p in data["projects"]] == [pid]
    assert client.get("/api/system/jobs").json() == {"status": "ok", "data": []}


def test_schema_version_recorded(client, settings):
    with sqlite3.connect(settings.workspace / "aistudio.db") as db:
        assert db.execute("select max(version) from schema_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_token_auth(settings):
    settings.api_token = "s3cret-token"
    with TestClient(create_app(settings), follow_redirects=False) as c:
        r = c.get("/api/projects")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        assert c.get("/api/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/projects", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/system/health").status_code in (200, 503)  # open, never 401
        r = c.get("/projects")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = c.post("/login", data={"token": "nope", "next": "/projects"})
        assert r.status_code == 401
        r = c.post("/login", data={"token": "s3cret-token", "next": "/projects"})
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/projects").status_code == 200  # cookie now set on the client


def test_pages_render(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/projects"
    assert "New project" in client.get("/projects").text
    pid = client.post("/api/projects", json={"name": "a", "task": "detection"}).json()["data"]["id"]
    for section in ("dataset", "split", "training", "evaluation", "export"):
        r = client.get(f"/projects/{pid}/{section}")
        assert r.status_code == 200 and 'class="tabs"' in r.text
    assert client.get(f"/projects/{pid}/nope").status_code == 422 or client.get(f"/projects/{pid}/nope").status_code == 404


def test_openapi_lists_real_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/projects" in paths and "/api/system/health" in paths
    assert client.get("/docs").status_code == 200
