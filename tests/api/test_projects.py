"""Projects API, in-process (real SQLite, temp workspace)."""

from __future__ import annotations

import pytest

from tests.pg import both_backends
from tests.htmlq import parse


def create(client, name="Cats", task="classification", **extra):
    r = client.post("/api/projects", json={"name": name, "task": task, **extra})
    assert r.status_code == 201, r.text
    return r.json()["data"]


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_crud_round_trip(client, settings):
    p = create(client, description="first")
    assert p["id"].startswith("proj-") and p["task"] == "classification" and p["image_count"] == 0
    assert (settings.workspace / "projects" / p["id"] / "dataset" / "images").is_dir()

    listed = client.get("/api/projects").json()["data"]
    assert listed["total"] == 1 and listed["items"][0]["id"] == p["id"]

    r = client.patch(f"/api/projects/{p['id']}", json={"name": "Dogs"})
    assert r.json()["data"]["name"] == "Dogs" and r.json()["data"]["description"] == "first"
    assert client.get(f"/api/projects/{p['id']}").json()["data"]["name"] == "Dogs"

    r = client.delete(f"/api/projects/{p['id']}")
    assert r.json() == {"status": "ok", "data": {"id": p["id"], "deleted": True}}
    assert not (settings.workspace / "projects" / p["id"]).exists()
    assert client.get(f"/api/projects/{p['id']}").status_code == 404


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_pagination(client):
    for i in range(5):
        create(client, name=f"p{i}")
    page = client.get("/api/projects?offset=1&limit=2").json()["data"]
    assert page["total"] == 5 and len(page["items"]) == 2 and page["offset"] == 1 and page["limit"] == 2
    r = client.get("/api/projects?limit=501")
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"task": "classification"}, "name"),
        ({"name": "x", "task": "segmentation"}, "task"),
        ({"name": "", "task": "detection"}, "name"),
        ({"name": "x" * 201, "task": "detection"}, "name"),
        ({"name": "x", "task": "detection", "color": "red"}, "color"),
        ({"name": "x", "task": "detection", "description": "d" * 5001}, "description"),
        ({"name": 5, "task": "detection"}, "name"),
    ],
)
def test_bad_bodies_are_422_naming_the_field_and_write_nothing(client, body, field):
    r = client.post("/api/projects", json=body)
    assert r.status_code == 422
    err = r.json()
    assert err["status"] == "error" and err["error"]["code"] == "VALIDATION_ERROR"
    assert field in err["error"]["message"]
    assert client.get("/api/projects").json()["data"]["total"] == 0


def test_malformed_json(client):
    r = client.post("/api/projects", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR"
    assert client.get("/api/projects").json()["data"]["total"] == 0


@pytest.mark.parametrize(
    "pid", ["proj-zzz", "nope", "..", "%2e%2e", "proj-0123456789ab%2F..", "proj-%2e%2e%2fetc", "proj-000000000000"]
)
def test_unknown_or_hostile_ids_are_404(client, pid):
    for method in ("get", "patch", "delete"):
        kwargs = {"json": {"name": "x"}} if method == "patch" else {}
        r = getattr(client, method)(f"/api/projects/{pid}", **kwargs)
        assert r.status_code == 404, (method, pid, r.text)
        assert r.json()["error"]["code"] == "NOT_FOUND"


def test_id_with_slash_is_404(client):
    r = client.get("/api/projects/proj-abc/../../etc/passwd")
    assert r.status_code == 404 and r.json()["status"] == "error"


def test_htmx_gets_the_rows_fragment_not_a_page(client):
    made = [create(client, name=name) for name in ("Visible", "Other <b>bold</b>")]
    r = client.get("/api/projects", headers={"HX-Request": "true"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = parse(r.text)
    assert not html.select("html") and not html.select("head") and not html.select("body")  # a fragment
    rows = html.select("#projects-table tbody tr")
    assert {row.attrs["data-project-id"] for row in rows} == {p["id"] for p in made}
    for row in rows:
        project = next(p for p in made if p["id"] == row.attrs["data-project-id"])
        link = row.select_one("a")
        assert link.attrs["href"] == f"/projects/{project['id']}/dataset"
        assert link.text == project["name"]  # markup in a name stays text
        assert row.select_one("button[hx-delete]").attrs["hx-delete"] == f"/api/projects/{project['id']}"
    # the JSON answer for the same request without HX-Request
    assert {p["id"] for p in client.get("/api/projects").json()["data"]["items"]} == {p["id"] for p in made}


def test_htmx_fragment_without_projects_has_no_rows(client):
    html = parse(client.get("/api/projects", headers={"HX-Request": "true"}).text)
    assert not html.select("tr") and html.select_one(".empty")


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_delete_refused_while_job_runs(client, settings):
    from appliance.store.db import session_scope
    from appliance.store.tables import ImportJob

    p = create(client)
    with session_scope(settings.db_url) as s:
        s.add(ImportJob(id="imp-0123456789ab", project_id=p["id"], status="running", format="folder", source="x"))
    r = client.delete(f"/api/projects/{p['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT" and "imp-0123456789ab" in r.json()["error"]["message"]
    assert client.get(f"/api/projects/{p['id']}").status_code == 200


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_data_survives_restart(settings):
    from fastapi.testclient import TestClient

    from appliance.main import create_app

    with TestClient(create_app(settings)) as c:
        pid = create(c, name="Persisted")["id"]
    with TestClient(create_app(settings)) as c:
        assert c.get(f"/api/projects/{pid}").json()["data"]["name"] == "Persisted"
