"""Issue #12 item 10: deleting something a running job uses.

Before: deleting an experiment silently removed its running exports (which went on writing files
for a record that was gone), deleting one image killed the training reading it, and deleting a
project ignored an import being cancelled. Now a delete refuses with 409 naming each job in the
way; `?force=true` stops them first and deletes once they have ended, leaving no file behind.
Jobs are held at an exact point with the test gates (`ray_jobs/events.py`), never by slowness.
"""

from __future__ import annotations

import os

import pytest

from appliance.store.db import session_scope
from appliance.store.tables import ImportJob
from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, experiment, project_with_split, wait_experiment, wait_for

def refused_409(response, *fragments: str) -> str:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "CONFLICT"
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    return error["message"]


@pytest.fixture
def trained(server):
    """A project of its own with a one-epoch classifier: these tests delete it."""
    pid, sid = project_with_split(server.http, server.import_root, per_class=6)
    eid = create_experiment(server.http, pid, sid, epochs=1, name="deletable")
    assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(server.http, pid, eid)["status"] == "completed"
    return pid, sid, eid


def an_image_in(server, pid) -> str:
    return server.http.get(f"/api/datasets/{pid}/images", params={"limit": 1}).json()["data"]["items"][0]["id"]


@pytest.mark.ray
def test_running_export_blocks_deletes_and_force_cancels_it_without_orphans(server, trained):
    pid, _, eid = trained
    workspace = server.settings.workspace
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "onnx"})
    assert r.status_code == 202, r.text
    xid = r.json()["data"]["id"]
    gates = Gates(xid).close("running")
    try:
        gates.wait_arrival("running")  # the Ray task runs, its record says so, its folder exists
        export_dir = workspace / "projects" / pid / "exports" / xid
        assert export_dir.is_dir()
        running = f"export {xid} (running)"
        refused_409(server.http.delete(f"/api/training/{pid}/experiments/{eid}"), f"Experiment {eid}", running, "?force=true")
        refused_409(server.http.delete(f"/api/export/{pid}/{xid}"), f"Export {xid}", running)
        refused_409(server.http.delete(f"/api/datasets/{pid}/images/{an_image_in(server, pid)}"), running)
        refused_409(server.http.delete(f"/api/projects/{pid}"), running)
        assert server.http.get(f"/api/export/{pid}/{xid}").json()["data"]["status"] == "running"
        assert experiment(server.http, pid, eid)["status"] == "completed"

        r = server.http.delete(f"/api/training/{pid}/experiments/{eid}", params={"force": "true"})
        assert r.status_code == 200, r.text
    finally:
        gates.open()
    assert server.http.get(f"/api/export/{pid}/{xid}").status_code == 404
    assert server.http.get(f"/api/training/{pid}/experiments/{eid}").status_code == 404
    # The export's Ray worker was killed, so nothing writes into the removed folders any more.
    task_pid = gates.arrivals("running")[0]["pid"]
    wait_for(lambda: os.path.exists(f"/proc/{task_pid}"), lambda alive: not alive, timeout=60)
    assert not export_dir.exists()
    assert not (workspace / "projects" / pid / "experiments" / eid).exists()
    assert not (workspace / "ray_results" / eid).exists()


@pytest.mark.ray
def test_running_training_blocks_image_and_project_delete_and_force_stops_it(server):
    pid, sid = project_with_split(server.http, server.import_root, per_class=6)
    eid = create_experiment(server.http, pid, sid, epochs=3, name="in-the-way")
    image_id = an_image_in(server, pid)
    gates = Gates(eid).close("epoch:2")
    try:
        assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
        gates.wait_arrival("epoch:2")  # epoch 1 trained on every image; epoch 2 is about to read them again
        running = f"training run {eid} (running)"
        refused_409(server.http.delete(f"/api/datasets/{pid}/images/{image_id}"), f"Image {image_id}", running)
        refused_409(server.http.delete(f"/api/projects/{pid}"), f"Project {pid}", running)
        assert server.http.get(f"/api/datasets/{pid}/images/{image_id}").status_code == 200
        assert experiment(server.http, pid, eid)["status"] == "running"

        r = server.http.delete(f"/api/projects/{pid}", params={"force": "true"})
        assert r.status_code == 200, r.text
    finally:
        gates.open()
    workspace = server.settings.workspace
    assert server.http.get(f"/api/projects/{pid}").status_code == 404
    assert not (workspace / "projects" / pid).exists()
    assert not (workspace / "ray_results" / eid).exists()
    jobs = server.http.get("/api/system/jobs").json()["data"]
    assert eid not in str(jobs)


@pytest.mark.ray
def test_image_outside_running_jobs_splits_is_deleted_while_they_run(server, trained):
    """Only jobs that read the image are in the way: an image added after the split is free."""
    pid, sid, eid = trained
    before = {i["id"] for i in server.http.get(f"/api/datasets/{pid}/images", params={"limit": 500}).json()["data"]["items"]}
    from tests.fixtures import make_classification_folder
    from tests.workflows import import_folder

    extra = server.import_root / f"extra-{pid}"
    make_classification_folder(extra, per_class=1, size=24, seed=99)
    import_folder(server.http, pid, extra)
    new = [i["id"] for i in server.http.get(f"/api/datasets/{pid}/images", params={"limit": 500}).json()["data"]["items"]
           if i["id"] not in before]
    assert new
    other = create_experiment(server.http, pid, sid, epochs=2, name="reader")
    gates = Gates(other).close("epoch:2")
    try:
        assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": other}).status_code == 202
        gates.wait_arrival("epoch:2")
        assert server.http.delete(f"/api/datasets/{pid}/images/{new[0]}").status_code == 200
        assert server.http.post(f"/api/training/{pid}/experiments/{other}/stop").status_code == 200
    finally:
        gates.open()
    assert wait_experiment(server.http, pid, other)["status"] in ("stopped", "completed")


def test_import_being_cancelled_blocks_project_delete(client, settings):
    """In-process: a `cancelling` import still writes until it notices; the project waits for it."""
    pid = client.post("/api/projects", json={"name": "cancelling", "task": "classification"}).json()["data"]["id"]
    with session_scope(settings.db_url) as s:
        s.add(ImportJob(id="imp-0123456789ab", project_id=pid, status="cancelling", format="folder", source="x"))
    refused_409(client.delete(f"/api/projects/{pid}"), f"Project {pid}", "import imp-0123456789ab (cancelling)")
    assert client.get(f"/api/projects/{pid}").status_code == 200
