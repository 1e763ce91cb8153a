"""Issue #16: what POST /api/deployments refuses before anything starts, in-process (no Ray): each bad
value is a 422 naming its field (the schema's bounds are also covered field by field by the generated
cases of tests/api/test_bad_values.py), a taken name is a 409 naming `name`, unknown ids are 404s, and an
export or project that a live endpoint serves cannot be deleted (409 naming the endpoint)."""

from __future__ import annotations

import pytest

from appliance.store import deployments as store
from appliance.store.db import session_scope
from appliance.store.ids import new_id
from appliance.store.tables import Experiment, Export, Split
from tests.fixtures import create_project


@pytest.fixture
def project(client):
    return create_project(client, name="deploy requests")


def body(pid, **overrides):
    return {"project_id": pid, "export_id": new_id("export"), "name": "my-model", **overrides}


@pytest.mark.parametrize("field, value", [
    ("name", "My Model"), ("name", "-lead"), ("name", "trail-"), ("name", "a" * 64), ("name", ""), ("name", "a_b"),
    ("name", 5), ("min_replicas", 0), ("min_replicas", 17), ("min_replicas", 1.5), ("max_replicas", 0),
    ("max_replicas", 17), ("gpu_fraction", -0.1), ("gpu_fraction", 1.5), ("gpu_fraction", "0"),
    ("max_batch_size", 0), ("max_batch_size", 257), ("batch_wait_ms", -1), ("batch_wait_ms", 1001),
    ("auth", "token"), ("auth", None), ("export_id", 7), ("project_id", None),
])
def test_bad_values_name_their_field(client, project, field, value):
    r = client.post("/api/deployments", json=body(project, **{field: value}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "VALIDATION_ERROR" and field in r.json()["error"]["message"], r.text


def test_refusals_before_any_endpoint_starts(client, project, settings):
    r = client.post("/api/deployments", json=body(project, min_replicas=3, max_replicas=2))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("max_replicas"), r.text
    r = client.post("/api/deployments", json=body(project, gpu_fraction=0.5))  # this host: no GPU in Ray
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("gpu_fraction"), r.text
    r = client.post("/api/deployments", json=body(project))  # a well-formed id of no export
    assert r.status_code == 404 and "xport" in r.json()["error"]["message"], r.text
    r = client.post("/api/deployments", json=body(new_id("project")))
    assert r.status_code == 404, r.text
    for path in (f"/api/deployments/{new_id('deployment')}", "/api/deployments/../etc", "/api/deployments/dep-x"):
        assert client.get(path).status_code == 404
    assert client.delete(f"/api/deployments/{new_id('deployment')}").status_code == 404
    assert client.get("/api/deployments", params={"project_id": "nope"}).status_code == 404
    assert client.get("/api/deployments", params={"project_id": project}).json()["data"] == []


def test_taken_name_and_served_export_and_project(client, project, settings):
    with session_scope(settings.db_url) as s:  # a record as a running endpoint leaves it (no Ray here)
        split = Split(id=new_id("split"), project_id=project, name="s", train=1, val=0, test=0, seed=1)
        exp = Experiment(id=new_id("experiment"), project_id=project, split_id=split.id, name="e", model="resnet18")
        export = Export(id=new_id("export"), project_id=project, experiment_id=exp.id, format="onnx",
                        precision="fp32", status="completed")
        for record in (split, exp, export):
            s.add(record)
            s.flush()
        row, key = store.create(s, project_id=project, export_id=export.id, name="served", min_replicas=1,
                                max_replicas=1, gpu_fraction=0, max_batch_size=8, batch_wait_ms=5, auth="key")
        row.status = store.RUNNING
        export_id, dep_id = export.id, row.id
    with session_scope(settings.db_url) as s:  # only the key's hash is stored
        stored = s.get(type(row), dep_id)
        assert stored.api_key_hash == store.hash_key(key) and key not in stored.api_key_hash
    r = client.post("/api/deployments", json=body(project, export_id=export_id, name="served"))
    assert r.status_code == 409 and "name" in r.json()["error"]["message"], r.text
    for url in (f"/api/export/{project}/{export_id}", f"/api/projects/{project}",
                f"/api/projects/{project}?force=true"):
        r = client.delete(url)
        assert r.status_code == 409 and "'served'" in r.json()["error"]["message"], r.text
    listed = client.get("/api/deployments", params={"project_id": project}).json()["data"]
    assert [d["name"] for d in listed] == ["served"] and listed[0]["url"] == "/models/served/predict"
    assert "api_key" not in listed[0]
