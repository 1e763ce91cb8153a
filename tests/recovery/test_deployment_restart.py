"""Issue #16: endpoints come back by themselves after the appliance restarts. A real appliance process
(its own local Ray) trains a small classifier, exports it to ONNX and deploys it; the appliance and its
Ray are killed with SIGKILL and started again on the same workspace: the endpoint is deployed again from
its record and answers with the same key and the same prediction."""

from __future__ import annotations

import pytest

from tests.recovery.appliance_process import ApplianceProcess, appliance_in
from tests.workflows import create_experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def appliance(tmp_path):
    yield from appliance_in(tmp_path, cpus=2)


def test_endpoint_is_back_after_kill_9_and_restart(appliance: ApplianceProcess):
    http = appliance.start()
    pid, sid = project_with_split(http, appliance.import_root, per_class=6)
    eid = create_experiment(http, pid, sid, epochs=1, name="restart")
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(http, pid, eid)["status"] == "completed"
    r = http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "onnx"})
    assert r.status_code == 202, r.text
    xid = r.json()["data"]["id"]
    assert wait_for(lambda: http.get(f"/api/export/{pid}/{xid}").json()["data"],
                    lambda e: e["status"] in ("completed", "failed"), timeout=600)["status"] == "completed"
    r = http.post("/api/deployments", json={"project_id": pid, "export_id": xid, "name": "survivor"})
    assert r.status_code == 202, r.text
    dep, key = r.json()["data"], r.json()["data"]["api_key"]
    wait_for(lambda: http.get(f"/api/deployments/{dep['id']}").json()["data"], lambda d: d["status"] == "running",
             timeout=300)
    image = http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
    data = http.get(image["url"]).content
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    before = http.post("/models/survivor/predict", content=data, headers=headers)
    assert before.status_code == 200, before.text

    appliance.kill()
    http.close()
    http = appliance.start()
    try:
        back = wait_for(lambda: http.get(f"/api/deployments/{dep['id']}").json()["data"],
                        lambda d: d["status"] in ("running", "failed") and d["replicas"]["running"] >= 1
                        or d["status"] == "failed", timeout=300)
        assert back["status"] == "running", back["error"]
        after = http.post("/models/survivor/predict", content=data, headers=headers)
        assert after.status_code == 200, after.text
        assert after.json()["data"] == before.json()["data"]
        assert http.post("/models/survivor/predict", content=data,
                         headers={"Content-Type": "image/jpeg"}).status_code == 401
    finally:
        http.close()
