"""Restart recovery with real processes: the appliance runs as its own process (CLI `serve`, its
own local Ray), gets one job of every kind in flight, is killed with SIGKILL together with every
process of its Ray, and is started again on the same workspace.

Standing at the kill (issue #16): a prediction endpoint deployed from an ONNX export of E1; after
the restart it is deployed again from its record and answers with the same key and prediction.
(Replicas here reserve no CPU, `AISTUDIO_ENDPOINT_CPUS=0`, so the CPU count below is unchanged.)

In flight at the kill, each state made deterministic rather than "slow enough":
- training run E2: a 1000-epoch run whose Train worker is up (and holds a CPU);
- evaluation EV1 and export X1: `running`, their Ray worker frozen with SIGSTOP, so they cannot
  finish before the kill;
- export X2: `queued` behind X1 (exports run one at a time);
- evaluation EV2: `queued`: the Ray declares 3 CPUs and E2, EV1 and X1 hold one each;
- upload import I1 (4000 images): `running`, between its first and last progress report;
- local import I2: `queued` behind I1 (imports run one at a time).
The database and the workspace are inspected at the moment of death, then after the restart.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.fixtures import make_classification_folder, zip_dir
from tests.recovery.appliance_process import ApplianceProcess, appliance_in
from tests.workflows import create_experiment, experiment, wait_for

pytestmark = pytest.mark.ray

CLASSES = ("red", "blue", "green", "yellow")
PER_CLASS = 1000
SPLIT = {"train": 0.02, "val": 0.02, "test": 0.96}
EXPECTED_SUBSETS = {"train": 4 * 20, "val": 4 * 20, "test": 4 * 960}  # 1000 per class cut 2/2/96 %
SMALL = ("purple", "cyan")
SMALL_PER_CLASS = 5
DONE = ("completed", "failed", "cancelled", "stopped", "interrupted")


@pytest.fixture
def appliance(tmp_path):
    yield from appliance_in(tmp_path, cpus=3, env={"AISTUDIO_ENDPOINT_CPUS": "0"})


def data(response: httpx.Response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()["data"]


def wait_job(http: httpx.Client, path: str, done=lambda j: j["status"] in DONE, timeout: float = 300, every=0.3):
    return wait_for(lambda: data(http.get(path)), done, timeout=timeout, every=every)


def freeze(app: ApplianceProcess, title: str) -> int:
    """SIGSTOP the one Ray worker running the task `title` (its process title is `ray::<task>`)."""
    pids = wait_for(lambda: app.find(f"ray::{title}"), bool, timeout=60, every=0.02)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGSTOP)
    return pids[0]


def new_project(http: httpx.Client, name: str) -> str:
    return data(http.post("/api/projects", json={"name": f"{name}-{uuid.uuid4().hex[:6]}", "task": "classification"}), 201)["id"]


def test_every_job_kind_after_kill_9_and_restart(appliance: ApplianceProcess, tmp_path: Path):
    big = make_classification_folder(appliance.import_root / "big", classes=CLASSES, per_class=PER_CLASS, size=32)
    big_zip = zip_dir(big.root, tmp_path / "big.zip")
    small = make_classification_folder(appliance.import_root / "small", classes=SMALL, per_class=SMALL_PER_CLASS,
                                       size=32, seed=7)
    ws = appliance.workspace

    # ---------------------------------------------------------------- first life
    http = appliance.start()
    pa = new_project(http, "trained")
    job = data(http.post("/api/datasets/import/local", json={"project_id": pa, "source_path": str(big.root)}), 202)
    assert wait_job(http, f"/api/datasets/{pa}/imports/{job['id']}")["status"] == "completed"
    split = data(http.post(f"/api/splits/{pa}", json={"name": "s", **SPLIT, "seed": 1}), 201)
    assert {k: split["counts"]["total"][k] for k in EXPECTED_SUBSETS} == EXPECTED_SUBSETS
    e1 = create_experiment(http, pa, split["id"], epochs=1, name="e1")
    data(http.post("/api/training/run", json={"project_id": pa, "experiment_id": e1}), 202)
    assert wait_job(http, f"/api/training/{pa}/experiments/{e1}")["status"] == "completed"

    # A live endpoint (issue #16), standing rather than in flight.
    x0 = data(http.post("/api/export/run", json={"project_id": pa, "experiment_id": e1, "format": "onnx"}), 202)["id"]
    assert wait_job(http, f"/api/export/{pa}/{x0}")["status"] == "completed"
    deployed = data(http.post("/api/deployments", json={"project_id": pa, "export_id": x0, "name": "survivor"}), 202)
    dep, key = deployed["id"], deployed["api_key"]
    up = wait_job(http, f"/api/deployments/{dep}", lambda d: d["status"] in ("running", "failed"))
    assert up["status"] == "running", up["error"]
    image = data(http.get(f"/api/datasets/{pa}/images?limit=1"))["items"][0]
    jpeg = http.get(image["url"]).content
    with_key = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    predicted = data(http.post("/models/survivor/predict", content=jpeg, headers=with_key))

    e2 = create_experiment(http, pa, split["id"], epochs=1000, name="e2")
    data(http.post("/api/training/run", json={"project_id": pa, "experiment_id": e2}), 202)
    # Its Train worker holds one of the 3 CPUs once its actor exists.
    wait_for(lambda: appliance.find("ray::RayTrainWorker"), bool, timeout=300, every=0.2)
    assert experiment(http, pa, e2)["status"] == "running"

    ev1 = data(http.post("/api/evaluation/run", json={"project_id": pa, "experiment_id": e1, "subset": "test"}), 202)["id"]
    wait_job(http, f"/api/evaluation/{pa}/{ev1}", lambda e: e["status"] != "queued", every=0.02)
    freeze(appliance, "evaluation_task")
    assert data(http.get(f"/api/evaluation/{pa}/{ev1}"))["status"] == "running", "EV1 ended before it was frozen"

    x1 = data(http.post("/api/export/run", json={"project_id": pa, "experiment_id": e1, "format": "onnx"}), 202)["id"]
    wait_job(http, f"/api/export/{pa}/{x1}", lambda e: e["status"] != "queued", every=0.02)
    wait_for(lambda: (ws / "projects" / pa / "exports" / x1).is_dir(), bool, timeout=60, every=0.02)
    freeze(appliance, "export_task")
    assert data(http.get(f"/api/export/{pa}/{x1}"))["status"] == "running", "X1 ended before it was frozen"

    x2 = data(http.post("/api/export/run", json={"project_id": pa, "experiment_id": e1, "format": "torchscript"}), 202)["id"]
    ev2 = data(http.post("/api/evaluation/run", json={"project_id": pa, "experiment_id": e1, "subset": "val"}), 202)["id"]

    pb = new_project(http, "imports")
    with big_zip.open("rb") as f:
        i1 = data(http.post("/api/datasets/import/upload", data={"project_id": pb, "format": "auto"},
                            files={"file": ("big.zip", f, "application/zip")}), 202)["id"]
    i2 = data(http.post("/api/datasets/import/local", json={"project_id": pb, "source_path": str(small.root)}), 202)["id"]
    mid = wait_job(http, f"/api/datasets/{pb}/imports/{i1}", lambda j: j["status"] in DONE or j["done"] > 0, every=0.02)
    appliance.kill()  # SIGKILL to the whole session, then to any process of its Ray, by pid
    http.close()
    assert appliance.members() == []  # no process of the appliance or of its Ray is left
    assert mid["status"] == "running" and 0 < mid["done"] < mid["total"] == PER_CLASS * len(CLASSES), mid

    # ---------------------------------------------------------------- the moment of death
    with sqlite3.connect(f"file:{ws / 'aistudio.db'}?mode=ro", uri=True) as db:
        def status(table, row_id):
            return db.execute(f"SELECT status FROM {table} WHERE id = ?", (row_id,)).fetchone()[0]

        at_death = {
            "e1": status("experiments", e1), "e2": status("experiments", e2),
            "ev1": status("evaluations", ev1), "ev2": status("evaluations", ev2),
            "x1": status("exports", x1), "x2": status("exports", x2),
            "i1": status("import_jobs", i1), "i2": status("import_jobs", i2),
        }
        assert at_death == {"e1": "completed", "e2": "running", "ev1": "running", "ev2": "queued",
                            "x1": "running", "x2": "queued", "i1": "running", "i2": "queued"}
        assert db.execute("SELECT holder FROM locks WHERE name = 'training'").fetchall() == [(e2,)]
        e2_epochs = db.execute("SELECT epochs_done FROM experiments WHERE id = ?", (e2,)).fetchone()[0]
        assert db.execute("SELECT count(*) FROM images WHERE project_id = ?", (pb,)).fetchone()[0] == 0
    assert (ws / "staging" / i1 / "upload.zip").is_file()  # what the restart has to clean up
    assert (ws / "projects" / pa / "exports" / x1).is_dir()

    # ---------------------------------------------------------------- second life, same workspace
    http = appliance.start()
    # Cut off: decided during start-up, so the very first answers show it.
    exp2 = experiment(http, pa, e2)
    assert exp2["status"] == "interrupted" and exp2["epochs_done"] == e2_epochs
    assert "restarted" in exp2["error"] and "resume" in exp2["error"]  # not the heartbeat time-out
    with sqlite3.connect(f"file:{ws / 'aistudio.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM locks").fetchone()[0] == 0  # the training slot is free

    imp1 = data(http.get(f"/api/datasets/{pb}/imports/{i1}"))
    assert imp1["status"] == "failed" and imp1["added"] == 0
    assert "server stopped" in imp1["error"] and "unchanged" in imp1["error"]
    assert not (ws / "staging" / i1).exists()

    for kind, row_id in (("evaluation", ev1), ("export", x1)):
        cut = data(http.get(f"/api/{kind}/{pa}/{row_id}"))
        assert cut["status"] == "failed" and "server stopped" in cut["error"], cut
    assert data(http.get(f"/api/evaluation/{pa}/{ev1}/samples?kind=all"))["total"] == 0
    assert not (ws / "projects" / pa / "exports" / x1).exists()
    assert http.get(f"/api/export/{pa}/{x1}/download").status_code == 409

    # New work is accepted at once, beside the re-queued jobs.
    ev3 = data(http.post("/api/evaluation/run", json={"project_id": pa, "experiment_id": e1, "subset": "test"}), 202)["id"]
    x3 = data(http.post("/api/export/run", json={"project_id": pa, "experiment_id": e1, "format": "onnx"}), 202)["id"]

    # Re-queued: each runs to completion.
    imp2 = wait_job(http, f"/api/datasets/{pb}/imports/{i2}")
    assert imp2["status"] == "completed" and imp2["added"] == SMALL_PER_CLASS * len(SMALL) and imp2["skipped"] == 0
    images = data(http.get(f"/api/datasets/{pb}/images?limit=200"))
    assert images["total"] == SMALL_PER_CLASS * len(SMALL)
    assert sorted(i["original_name"] for i in images["items"]) == sorted(item.relpath for item in small.items)
    # The dataset folder holds exactly the recorded images: nothing of the cut-off import I1.
    files = sorted(p.name for p in (ws / "projects" / pb / "dataset" / "images").iterdir())
    assert files == sorted(i["filename"] for i in images["items"])
    wait_for(lambda: sorted(p.name for p in (ws / "staging").iterdir()), lambda names: names == [], timeout=30)

    for ev_id, subset in ((ev2, "val"), (ev3, "test")):
        ev = wait_job(http, f"/api/evaluation/{pa}/{ev_id}")
        assert ev["status"] == "completed" and ev["total"] == ev["done"] == EXPECTED_SUBSETS[subset], ev
        assert data(http.get(f"/api/evaluation/{pa}/{ev_id}/samples?kind=all"))["total"] == EXPECTED_SUBSETS[subset]
    # The endpoint is deployed again from its record: same key, same answer; none without the key.
    back = wait_job(http, f"/api/deployments/{dep}", lambda d: d["status"] == "failed"
                    or d["status"] == "running" and d["replicas"]["running"] >= 1)
    assert back["status"] == "running", back["error"]
    assert data(http.post("/models/survivor/predict", content=jpeg, headers=with_key)) == predicted
    assert http.post("/models/survivor/predict", content=jpeg, headers={"Content-Type": "image/jpeg"}).status_code == 401

    for x_id, model_file in ((x2, "model.pt"), (x3, "model.onnx")):
        x = wait_job(http, f"/api/export/{pa}/{x_id}")
        assert x["status"] == "completed", x
        bundle = http.get(f"/api/export/{pa}/{x_id}/download")
        assert bundle.status_code == 200
        with zipfile.ZipFile(io.BytesIO(bundle.content)) as zf:
            assert {model_file, "predict.py"} <= {Path(n).name for n in zf.namelist()}
    http.close()
    appliance.kill()
    assert appliance.members() == []
