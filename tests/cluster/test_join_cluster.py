"""Issue #15 item 1: joining an existing Ray cluster keeps the appliance's settings.

A two-node cluster is made with `ray start` as a user would (tests/cluster/ray_cluster.py): its
raylets run from working folders of their own with no `AISTUDIO_*` in their environment. The
appliance (`aistudio serve`, a separate process) joins it with `AISTUDIO_RAY_ADDRESS` and is given
a workspace and an import root. Every Ray process it starts there — the Serve replica, the event
bus, the Train worker, the evaluation task — must use those settings: the database is the
workspace's, an import from the configured root is allowed, and nothing lands in the raylets'
working folders. On v0.1 the replica (started by the raylet) made a SQLite file in the raylet's
working folder and refused imports from the configured root.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.cluster.ray_cluster import CLIENT_ENV, RayCluster
from tests.fixtures import make_classification_folder
from tests.recovery.appliance_process import ApplianceProcess
from tests.workflows import create_experiment, wait_experiment, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def cluster(tmp_path):
    made = RayCluster(tmp_path / "cluster")
    made.root.mkdir()
    try:
        made.head(cpus=1)
        made.worker(cpus=3)
        yield made
    finally:
        made.stop()


def data(response: httpx.Response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()["data"]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_joined_cluster_uses_the_appliances_workspace_database_and_import_roots(tmp_path, cluster):
    imports = tmp_path / "imports"
    make_classification_folder(imports / "colours", per_class=6, size=24)
    appliance = ApplianceProcess(tmp_path / "app", imports, cpus=1, env={"AISTUDIO_RAY_ADDRESS": cluster.address, **CLIENT_ENV})
    appliance.root.mkdir()
    try:
        http = appliance.start()
        pid = data(http.post("/api/projects", json={"name": "joined", "task": "classification"}), 201)["id"]

        # The replica's database is the workspace's, not a file in the raylet's working folder.
        db_file = appliance.workspace / "aistudio.db"
        assert db_file.is_file(), files_under(appliance.root)
        with sqlite3.connect(db_file) as db:
            assert db.execute("select name from projects where id = ?", (pid,)).fetchone() == ("joined",)

        # An import from the configured root is allowed (the import worker runs in the replica).
        job = data(http.post("/api/datasets/import/local", json={
            "project_id": pid, "source_path": str(imports / "colours"), "format": "auto"}), 202)
        job = wait_for(lambda: data(http.get(f"/api/datasets/{pid}/imports/{job['id']}")),
                       lambda j: j["status"] in ("completed", "failed", "cancelled"), timeout=120)
        assert job["status"] == "completed", job

        # A Train worker and an evaluation task on the cluster write to the same database and workspace.
        sid = data(http.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.25, "test": 0.25,
                                                           "seed": 1}), 201)["id"]
        eid = create_experiment(http, pid, sid, epochs=1)
        data(http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}), 202)
        run = wait_experiment(http, pid, eid, timeout=400)
        assert run["status"] == "completed", run
        assert (appliance.workspace / "projects" / pid / "experiments" / eid / "weights" / "best.ckpt").is_file()
        evaluation = data(http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid,
                                                                 "subset": "test"}), 202)
        evaluation = wait_for(lambda: data(http.get(f"/api/evaluation/{pid}/{evaluation['id']}")),
                              lambda e: e["status"] in ("completed", "failed", "cancelled"), timeout=300)
        assert evaluation["status"] == "completed", evaluation
    finally:
        appliance.close()

    # Nothing of the appliance's landed where Ray's node processes run.
    for node in ("head", "worker1"):
        assert [f for f in files_under(cluster.node_folder(node)) if "aistudio" in f or f.endswith(".db")] == []
