"""Envelope for framework errors, token auth, and the system routes (in-process, no Ray)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3

import pytest

from fastapi.testclient import TestClient

from appliance.store.db import head_revision
from appliance.store.legacy_migrations import HANDOFF_VERSION
from appliance.main import create_app
from appliance.services import datasets as dataset_service
from tests.fixtures import create_project, import_and_wait, make_classification_folder, start_path_import, wait_import
from tests.hostile.import_worker_hooks import hook, release, started
from tests.host import cuda_available, nvidia_smi_gpus
from tests.htmlq import parse
from tests.workflows import wait_for

# The status strip's labels and the health field each stands for.
STRIP_PARTS = [("Ray", "ray"), ("DB", "database"), ("Disk", "workspace_writable")]


def test_unknown_route_and_method_are_enveloped(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = client.put("/api/projects")
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


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


def test_gpu_list_is_what_the_host_has(client):
    """The GPUs nvidia-smi lists (none on a CPU host), by name and memory."""
    data = client.get("/api/system/gpu").json()["data"]
    expected = nvidia_smi_gpus()
    assert [(g["index"], g["name"]) for g in data["gpus"]] == [(i, g["name"]) for i, g in enumerate(expected)]
    for got, want in zip(data["gpus"], expected):  # nvidia-smi rounds to MiB
        assert abs(got["memory_total"] - want["memory_total"]) < 2**20
    assert bool(data["gpus"]) >= cuda_available()  # PyTorch sees a GPU only where NVML does
    if not expected:
        assert data["gpus"] == [] and data["reason"]
    else:
        assert data["reason"] is None


def test_health_strip_shows_each_part_as_its_health_field(client, monkeypatch):
    """Each dot of the pages' status strip is green or red as its own health field says: Ray down
    turns only the Ray dot red."""
    def dots():
        strip = parse(client.get("/api/system/health", headers={"HX-Request": "true"}).text)
        return [(d.next_text(), d.classes & {"ok", "bad"}) for d in strip.select("span.dot")]

    monkeypatch.setattr("appliance.services.system.ray_is_up", lambda: True)
    assert dots() == [(label, {"ok"}) for label, _ in STRIP_PARTS]
    monkeypatch.setattr("appliance.services.system.ray_is_up", lambda: False)
    assert dots() == [("Ray", {"bad"}), ("DB", {"ok"}), ("Disk", {"ok"})]


def folder_bytes(folder) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(folder) for f in files)


def test_workspace_usage(client, settings):
    empty = create_project(client, name="empty")
    full = create_project(client, name="full")
    import_and_wait(client, full, make_classification_folder(settings.allowed_import_roots[0] / "f", per_class=3).root)
    data = client.get("/api/system/workspace").json()["data"]
    assert data["path"] == str(settings.workspace)
    assert data["total_bytes"] == shutil.disk_usage(settings.workspace).total
    projects = settings.workspace / "projects"
    assert {p["project_id"]: p["bytes"] for p in data["projects"]} == {
        empty: folder_bytes(projects / empty), full: folder_bytes(projects / full)}
    assert folder_bytes(projects / full) > folder_bytes(projects / empty)


def test_jobs_list_shows_a_running_import(client, settings, monkeypatch):
    assert client.get("/api/system/jobs").json() == {"status": "ok", "data": []}
    monkeypatch.setattr(dataset_service, "WORKER_ENTRY", hook("held"))  # parsing waits for <root>.release
    pid = create_project(client)
    source = make_classification_folder(settings.allowed_import_roots[0] / "f", per_class=2).root
    job_id = start_path_import(client, pid, source).json()["data"]["id"]
    try:
        wait_for(started(source).exists, bool, timeout=60, every=0.05)
        job = client.get(f"/api/datasets/{pid}/imports/{job_id}").json()["data"]
        listed = client.get("/api/system/jobs").json()["data"]
    finally:
        release(source).touch()
    assert listed == [{"kind": "import", "id": job_id, "project_id": pid, "status": "running",
                       "done": job["done"], "total": job["total"], "created_at": job["created_at"]}]
    assert wait_import(client, pid, job_id)["status"] == "completed"
    assert client.get("/api/system/jobs").json()["data"] == []


def test_schema_version_recorded(client, settings):
    with sqlite3.connect(settings.workspace / "aistudio.db") as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [(head_revision(),)]
        assert db.execute("select max(version) from schema_version").fetchone()[0] == HANDOFF_VERSION
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_token_auth(settings, monkeypatch):
    """In-process; tests/api/test_token_mode.py walks every route through Serve."""
    settings.api_token = "s3cret-token"
    monkeypatch.setattr("appliance.services.system.ray_is_up", lambda: False)
    with TestClient(create_app(settings), follow_redirects=False) as c:
        r = c.get("/api/projects")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        assert c.get("/api/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/projects", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        # open: the health handler answers (503: no Ray in this process), not the token check
        assert c.get("/api/system/health").json()["error"]["code"] == "UNAVAILABLE"
        # open paths are exact: a longer path that starts like one is not open
        assert c.get("/api/system/healthz").status_code == 401
        assert c.get("/loginx").status_code == 303
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
    page = parse(client.get("/projects").text)
    assert page.select_one("form#create-project input[name=name]")
    pid = client.post("/api/projects", json={"name": "a", "task": "detection"}).json()["data"]["id"]
    sections = ("dataset", "split", "training", "evaluation", "export", "deploy")
    for section in sections:
        r = client.get(f"/projects/{pid}/{section}")
        assert r.status_code == 200
        tabs = parse(r.text).select(".tabs a")
        assert [a.attrs["href"] for a in tabs] == [f"/projects/{pid}/{s}" for s in sections]
        assert [a.attrs["href"] for a in tabs if "active" in a.classes] == [f"/projects/{pid}/{section}"]
    r = client.get(f"/projects/{pid}/nope")
    assert r.status_code == 422 and "section" in r.json()["error"]["message"]


def test_openapi_lists_every_api_route(client):
    from fastapi.routing import iter_route_contexts

    schema = client.get("/openapi.json").json()
    api_routes = {(m.lower(), r.path) for r in iter_route_contexts(client.app.routes)
                  if r.methods and r.path.startswith("/api/") for m in r.methods if m != "HEAD"}
    documented = {(m, path) for path, ops in schema["paths"].items() for m in ops}
    assert documented == api_routes
    r = client.get("/docs")
    assert r.status_code == 200 and "/openapi.json" in r.text


def test_the_environment_cannot_steer_settings(tmp_path, monkeypatch):
    """conftest removed every AISTUDIO_* variable, and Settings read no `.env` in tests."""
    from appliance.config import Settings

    assert not [name for name in os.environ if name.startswith("AISTUDIO_")]
    (tmp_path / ".env").write_text("AISTUDIO_PORT=1234\nAISTUDIO_DATABASE_URL=sqlite:////nowhere/x.db\n")
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.port != 1234 and settings.database_url is None


def test_start_refuses_a_port_that_is_in_use(tmp_path, monkeypatch):
    import ray
    from ray import serve

    from appliance.config import Settings
    from appliance.runtime import PortInUse, start_appliance

    def must_not_start(*args, **kwargs):
        raise AssertionError("nothing may start on a taken port")

    monkeypatch.setattr(ray, "init", must_not_start)
    monkeypatch.setattr(serve, "start", must_not_start)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(workspace=tmp_path / "ws", port=taken.getsockname()[1], api_token=None)
        with pytest.raises(PortInUse):
            start_appliance(settings)
