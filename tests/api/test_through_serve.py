"""The real thing: local Ray + Serve proxy + SQLite + files, over HTTP."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_health_is_green_through_serve(server):
    r = server.http.get("/api/system/health")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"ray": True, "database": True, "workspace_writable": True, "version": "0.1.0"}


def test_project_crud_through_serve(server):
    r = server.http.post("/api/projects", json={"name": "Serve", "task": "detection"})
    assert r.status_code == 201
    pid = r.json()["data"]["id"]
    assert any(p["id"] == pid for p in server.http.get("/api/projects").json()["data"]["items"])
    assert server.http.patch(f"/api/projects/{pid}", json={"description": "d"}).json()["data"]["description"] == "d"
    assert server.http.delete(f"/api/projects/{pid}").status_code == 200
    assert server.http.get(f"/api/projects/{pid}").status_code == 404


@pytest.mark.parametrize("path", ["/api/projects/..%2F..%2Fetc", "/api/projects/%2e%2e", "/api/projects/proj-x/../../x"])
def test_hostile_ids_through_the_proxy(server, path):
    r = server.http.get(path)
    assert r.status_code == 404 and r.json()["status"] == "error"


def test_validation_error_through_serve(server):
    before = server.http.get("/api/projects").json()["data"]["total"]
    r = server.http.post("/api/projects", content=b'{"name": "x", "task": "nope"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "task" in r.json()["error"]["message"]
    assert server.http.get("/api/projects").json()["data"]["total"] == before


def test_event_bus_is_up_and_knows_the_workspace(server):
    import ray

    from ray_jobs.events import get_event_bus

    config = ray.get(get_event_bus().config.remote())
    assert config["workspace"] == str(server.settings.workspace)
