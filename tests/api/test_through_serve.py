"""The real thing: local Ray + Serve proxy + SQLite + files, over HTTP."""

from __future__ import annotations

import os
import socket
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

import appliance

pytestmark = pytest.mark.ray


def test_health_is_green_through_serve(server):
    r = server.http.get("/api/system/health")
    assert r.status_code == 200, r.text
    assert version("aistudio") == appliance.__version__  # the package metadata and the code agree
    assert r.json()["data"] == {"ray": True, "database": True, "workspace_writable": True,
                                "version": version("aistudio")}


def test_the_http_port_is_the_servers_alone(server):
    """Serve's proxy binds without SO_REUSEPORT here: no other process can share the port (and a
    taken port makes start_appliance raise PortInUse instead of sharing it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", server.settings.port))


def test_the_dashboard_port_is_the_one_it_bound(server):
    port = server.settings.ray_dashboard_port
    assert port != 0
    token_file = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.is_file() else {}
    r = httpx.get(f"http://127.0.0.1:{port}/api/version", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["ray_version"] == version("ray")


def test_ray_processes_run_outside_the_checkout(server):
    """Ray's workers (the ingress replica among them) keep the working directory Ray started in:
    the server's temp folder, where no developer `.env` can be read by their Settings()."""
    import ray

    @ray.remote(num_cpus=0)
    def working_directory() -> str:
        return os.getcwd()

    cwd = ray.get(working_directory.remote())
    assert Path(cwd) == server.settings.workspace.parent
    assert not (Path(cwd) / ".env").exists()


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
