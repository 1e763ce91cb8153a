"""Training through the real server and a real local Ray: Ray Train V2 + Lightning on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.ray_jobs.jobs import pin_cluster, submit
from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, experiment, project_with_split, read_sse, wait_experiment, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dataset(server):
    return project_with_split(server.http, server.import_root)


def test_run_streams_one_epoch_event_per_epoch_then_complete(server, dataset):
    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=2)
    other = create_experiment(server.http, pid, sid, name="other")
    r = server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid})
    assert r.status_code == 202 and r.json()["data"]["status"] == "queued"

    # One at a time: a second run is refused while the first is queued or running.
    r = server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": other})
    assert r.status_code == 409 and r.json()["error"] == {"code": "CONFLICT", "message": "An experiment is already training"}
    r = server.http.delete(f"/api/training/{pid}/experiments/{eid}")
    assert r.status_code == 409

    events = read_sse(server.http, f"/api/training/{pid}/experiments/{eid}/stream")
    kinds = [e[0] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "complete"
    epochs = [e for e in events if e[0] == "epoch_end"]
    assert [e[1]["epoch"] for e in epochs] == [1, 2] and [e[2] for e in epochs] == ["1", "2"]
    assert set(epochs[0][1]) >= {"epoch", "epochs", "train_loss", "val_loss", "val_metric", "lr", "seconds", "images_per_s"}
    assert events[-1][1]["status"] == "completed"

    exp = experiment(server.http, pid, eid)
    assert exp["status"] == "completed" and exp["epochs_done"] == 2 and len(exp["history"]) == 2
    assert exp["best_metric"] == max(h["val_metric"] for h in exp["history"])
    weights = server.settings.workspace / "projects" / pid / "experiments" / eid / "weights"
    assert (weights / "best.ckpt").is_file() and (weights / "last.ckpt").is_file()
    assert "epoch 2/2" in server.http.get(f"/api/training/{pid}/experiments/{eid}/logs").text

    # A late subscriber gets the whole history, then complete; Last-Event-ID skips what it has.
    late = read_sse(server.http, f"/api/training/{pid}/experiments/{eid}/stream")
    assert [e[1]["epoch"] for e in late if e[0] == "epoch_end"] == [1, 2]
    again = read_sse(server.http, f"/api/training/{pid}/experiments/{eid}/stream", headers={"Last-Event-ID": "1"})
    assert [e[1]["epoch"] for e in again if e[0] == "epoch_end"] == [2]


def test_stop_keeps_checkpoint_then_resume_and_extend(server, dataset):
    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=4, name="stoppable")
    gates = Gates(eid).close("epoch:2")
    try:
        assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
        gates.wait_arrival("epoch:2")  # held before epoch 2: a stop now is honoured at the end of epoch 2
        r = server.http.post(f"/api/training/{pid}/experiments/{eid}/stop")
        assert r.status_code == 200, r.text
    finally:
        gates.open()
    exp = wait_experiment(server.http, pid, eid)
    assert (exp["status"], exp["epochs_done"], [h["epoch"] for h in exp["history"]]) == ("stopped", 2, [1, 2])
    last = server.settings.workspace / "projects" / pid / "experiments" / eid / "weights" / "last.ckpt"
    steps = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert steps > 0 and steps % 2 == 0  # two whole epochs of steps

    r = server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid, "resume": True})
    assert r.status_code == 202, r.text
    exp = wait_experiment(server.http, pid, eid)
    assert exp["status"] == "completed" and exp["epochs_done"] == 4
    assert [h["epoch"] for h in exp["history"]] == [1, 2, 3, 4]
    assert "resuming" in server.http.get(f"/api/training/{pid}/experiments/{eid}/logs").text
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == steps * 2  # continued, not restarted

    r = server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid, "resume": True, "epochs": 5})
    assert r.status_code == 202, r.text
    exp = wait_experiment(server.http, pid, eid)
    assert exp["status"] == "completed" and exp["epochs_done"] == 5 and exp["epochs"] == 5
    assert [h["epoch"] for h in exp["history"]] == [1, 2, 3, 4, 5]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == steps // 2 * 5


def test_ray_job_submit_runs_the_same_entrypoint(server, dataset):
    from ray.job_submission import JobStatus, JobSubmissionClient

    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=1, name="from-cli")
    token_file = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.is_file() else None
    client = JobSubmissionClient(f"http://127.0.0.1:{server.settings.ray_dashboard_port}", headers=headers)
    entrypoint = f"{pin_cluster()}{sys.executable} -m ray_jobs.train --project {pid} --experiment {eid}"
    job = wait_for(lambda: submit(client, entrypoint), lambda submitted: submitted is not None, timeout=120, every=2)
    status = wait_for(lambda: client.get_job_status(job), lambda s: s in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}, timeout=300, every=1)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    exp = experiment(server.http, pid, eid)
    assert exp["status"] == "completed" and exp["epochs_done"] == 1
    assert any(e["id"] == eid for e in server.http.get(f"/api/training/{pid}/experiments").json()["data"])


