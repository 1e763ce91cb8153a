"""Stop / resume / extend without races, through the real Serve ingress and a real local Ray.

Every test synchronises on the run itself — the training gates (`tests/ray_jobs/gates.py`) hold
a run at an exact point and tell the test which process is there — never on epochs being slow.
"""

from __future__ import annotations

import os
import re
import signal
import threading

import pytest
import torch

from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, experiment, project_with_split, read_sse, wait_experiment, wait_for

pytestmark = pytest.mark.ray

ALREADY_TRAINING = "An experiment is already training"
TRAIN_IMAGES, BATCH = 12, 4  # the module's split: 20 images, 60 % train; resnet18 at 32 px, batch 4
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH


@pytest.fixture(scope="module")
def dataset(server):
    pid, sid = project_with_split(server.http, server.import_root, per_class=10)
    split = server.http.get(f"/api/splits/{pid}/{sid}").json()["data"]
    assert split["counts"]["total"]["train"] == TRAIN_IMAGES
    return pid, sid


def run(http, pid: str, eid: str, **extra):
    return http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid, **extra})


def refused(response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] == code, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], (fragment, body)


def weights_dir(server, pid: str, eid: str):
    return server.settings.workspace / "projects" / pid / "experiments" / eid / "weights"


def checkpoint_steps(path) -> int:
    """Optimizer steps inside a Lightning checkpoint: how far its weights really trained."""
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def logged_epochs(server, pid: str, eid: str) -> list[int]:
    text = server.http.get(f"/api/training/{pid}/experiments/{eid}/logs").text
    return [int(n) for n in re.findall(r"\bepoch (\d+)/\d+ ", text)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_concurrent_run_requests_one_wins_and_a_stop_while_queued_ends_it_untrained(server, dataset):
    pid, sid = dataset
    eids = [create_experiment(server.http, pid, sid, epochs=1, name=f"racer-{i}") for i in range(4)]
    gates = {eid: Gates(eid).close("start") for eid in eids}  # a winner's driver waits before it takes the run
    try:
        barrier, answers = threading.Barrier(len(eids)), {}

        def request(eid: str) -> None:
            barrier.wait()
            answers[eid] = run(server.http, pid, eid)

        threads = [threading.Thread(target=request, args=(eid,)) for eid in eids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [eid for eid, r in answers.items() if r.status_code == 202]
        assert len(winners) == 1, {eid: r.text for eid, r in answers.items()}
        winner = winners[0]
        assert answers[winner].json()["data"]["status"] == "queued"
        for eid in set(eids) - {winner}:
            refused(answers[eid], 409, "CONFLICT", ALREADY_TRAINING)
            assert experiment(server.http, pid, eid)["status"] == "created"

        driver = gates[winner].wait_arrival("start")  # its driver runs and waits: the run is still queued
        assert driver["pid"] != os.getpid() and alive(driver["pid"])
        assert experiment(server.http, pid, winner)["status"] == "queued"
        r = server.http.post(f"/api/training/{pid}/experiments/{winner}/stop")
        assert r.status_code == 200 and r.json()["data"] == {"id": winner, "stop_requested": True}
        gates[winner].open()

        exp = wait_experiment(server.http, pid, winner)
        assert (exp["status"], exp["epochs_done"], exp["history"], exp["error"]) == ("stopped", 0, [], None)
        assert exp["best_metric"] is None and exp["started_at"] is None  # it never ran
        assert not weights_dir(server, pid, winner).exists()
        events = read_sse(server.http, f"/api/training/{pid}/experiments/{winner}/stream")
        assert [e[0] for e in events] == ["status", "complete"] and events[-1][1]["status"] == "stopped"
        assert gates[winner].arrivals("epoch:1") == []  # no Train worker ever started an epoch

        # The slot is free again: another of the racers starts and completes.
        loser = next(eid for eid in eids if eid != winner)
        gates[loser].open()
        assert run(server.http, pid, loser).status_code == 202
        exp = wait_experiment(server.http, pid, loser)
        assert (exp["status"], exp["epochs_done"], [h["epoch"] for h in exp["history"]]) == ("completed", 1, [1])
    finally:
        for g in gates.values():
            g.open()
        for eid in eids:
            wait_experiment(server.http, pid, eid, statuses=("created", "completed", "failed", "stopped", "interrupted"))


def test_every_refused_run_request_names_the_problem(server, dataset):
    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=1, name="refusals")
    other = create_experiment(server.http, pid, sid, epochs=1, name="refusals-other")
    r = server.http.post("/api/projects", json={"name": "elsewhere", "task": "classification"})
    other_project = r.json()["data"]["id"]

    # Before any run.
    refused(run(server.http, pid, eid, resume=True), 422, "VALIDATION_ERROR", "resume", eid, "never run")
    refused(run(server.http, pid, eid, epochs=3), 422, "VALIDATION_ERROR", "epochs", "resume=true")
    refused(run(server.http, pid, "exp-000000000000"), 404, "NOT_FOUND", "Experiment exp-000000000000 not found")
    refused(run(server.http, pid, "exp-../../x"), 404, "NOT_FOUND", "exp-../../x")
    refused(run(server.http, other_project, eid), 404, "NOT_FOUND", f"Experiment {eid} not found")
    refused(run(server.http, "proj-000000000000", eid), 404, "NOT_FOUND", "Project proj-000000000000 not found")
    stop = f"/api/training/{pid}/experiments/{eid}/stop"
    refused(server.http.post(stop), 409, "CONFLICT", eid, "is created, not training")
    refused(server.http.post(f"/api/training/{other_project}/experiments/{eid}/stop"), 404, "NOT_FOUND", eid)
    bad_bodies = [
        ({"project_id": pid}, "experiment_id: is required"),
        ({"experiment_id": eid}, "project_id: is required"),
        ({"project_id": pid, "experiment_id": eid, "resume": "maybe"}, "resume:"),
        ({"project_id": pid, "experiment_id": eid, "resume": True, "epochs": 0}, "epochs:"),
        ({"project_id": pid, "experiment_id": eid, "resume": True, "epochs": 1001}, "epochs:"),
        ({"project_id": pid, "experiment_id": eid, "gpu": 2}, "gpu:"),
        ([pid, eid], "body:"),
    ]
    for body, fragment in bad_bodies:
        refused(server.http.post("/api/training/run", json=body), 422, "VALIDATION_ERROR", fragment)
    r = server.http.post("/api/training/run", content=b"{not json", headers={"content-type": "application/json"})
    refused(r, 422, "VALIDATION_ERROR")
    assert experiment(server.http, pid, eid)["status"] == "created"  # nothing above touched it

    # While it is queued (its driver held before it takes the run) and holds the slot.
    gates = Gates(eid).close("start")
    try:
        assert run(server.http, pid, eid).status_code == 202
        gates.wait_arrival("start")
        refused(run(server.http, pid, eid), 409, "CONFLICT", f"Experiment {eid} is already queued")
        refused(run(server.http, pid, eid, resume=True), 409, "CONFLICT", f"Experiment {eid} is already queued")
        refused(run(server.http, pid, other), 409, "CONFLICT", ALREADY_TRAINING)
        r = server.http.delete(f"/api/training/{pid}/experiments/{eid}")
        refused(r, 409, "CONFLICT", f"training run {eid} (queued)", "?force=true")
        assert server.http.post(stop).status_code == 200
    finally:
        gates.open()
    assert wait_experiment(server.http, pid, eid)["status"] == "stopped"
    assert experiment(server.http, pid, other)["status"] == "created"


def test_stop_on_the_last_epoch_completes_the_run_with_every_epoch(server, dataset):
    """The app's rule (docs/api.md): a stop is honoured at the end of the epoch in which it arrives;
    one that arrives during the last epoch finds nothing left to skip, so the run is `completed`."""
    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=2, name="last-epoch-stop")
    other = create_experiment(server.http, pid, sid, epochs=1, name="last-epoch-other")
    gates = Gates(eid).close("epoch:2")
    try:
        assert run(server.http, pid, eid).status_code == 202
        worker = gates.wait_arrival("epoch:2")  # epoch 1 is recorded and checkpointed; epoch 2 is next
        exp = experiment(server.http, pid, eid)
        assert (exp["status"], [h["epoch"] for h in exp["history"]]) == ("running", [1])
        assert worker["pid"] != gates.arrivals("start")[0]["pid"]  # the Train worker, not the driver
        refused(run(server.http, pid, eid), 409, "CONFLICT", f"Experiment {eid} is already running")
        refused(run(server.http, pid, other), 409, "CONFLICT", ALREADY_TRAINING)
        assert server.http.post(f"/api/training/{pid}/experiments/{eid}/stop").status_code == 200
    finally:
        gates.open()

    exp = wait_experiment(server.http, pid, eid)
    assert (exp["status"], exp["epochs_done"], exp["error"]) == ("completed", 2, None)
    assert [h["epoch"] for h in exp["history"]] == [1, 2]
    assert exp["best_metric"] == max(h["val_metric"] for h in exp["history"])
    assert checkpoint_steps(weights_dir(server, pid, eid) / "last.ckpt") == 2 * STEPS_PER_EPOCH
    assert logged_epochs(server, pid, eid) == [1, 2]
    events = read_sse(server.http, f"/api/training/{pid}/experiments/{eid}/stream")
    assert [e[1]["epoch"] for e in events if e[0] == "epoch_end"] == [1, 2]
    assert events[-1][1] == {"status": "completed", "best_metric": exp["best_metric"], "error": None}

    # A completed run: nothing to resume, and extending needs more epochs than it did.
    refused(run(server.http, pid, eid, resume=True), 422, "VALIDATION_ERROR", "epochs", "already did 2 epochs")
    refused(run(server.http, pid, eid, resume=True, epochs=1), 422, "VALIDATION_ERROR", "already did 2 epochs")
    refused(run(server.http, pid, eid, resume=True, epochs=2), 422, "VALIDATION_ERROR", "already did 2 epochs")
    refused(server.http.post(f"/api/training/{pid}/experiments/{eid}/stop"), 409, "CONFLICT", "is completed, not training")
    assert experiment(server.http, pid, eid)["epochs"] == 2  # a refused extend changes nothing


def test_killed_driver_leaves_the_run_interrupted_and_resume_records_each_epoch_once(server, dataset):
    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=3, name="killed")
    gates = Gates(eid).close("epoch:2")
    try:
        assert run(server.http, pid, eid).status_code == 202
        worker = gates.wait_arrival("epoch:2")["pid"]
        driver = gates.arrivals("start")[0]["pid"]
        assert len({driver, worker, os.getpid()}) == 3 and alive(driver) and alive(worker)
        os.kill(driver, signal.SIGKILL)

        exp = wait_experiment(server.http, pid, eid)
        assert exp["status"] == "interrupted" and "died" in exp["error"]
        assert [h["epoch"] for h in exp["history"]] == [1] and exp["epochs_done"] == 1
        # Its Train worker goes with it (nothing keeps training behind an interrupted run).
        wait_for(lambda: alive(worker), lambda up: not up, timeout=120)
    finally:
        gates.open()

    r = run(server.http, pid, eid, resume=True)
    assert r.status_code == 202, r.text  # the slot was freed
    exp = wait_experiment(server.http, pid, eid)
    assert (exp["status"], exp["epochs_done"], exp["error"]) == ("completed", 3, None)
    assert [h["epoch"] for h in exp["history"]] == [1, 2, 3]
    assert logged_epochs(server, pid, eid) == [1, 2, 3]  # epoch 1 was not trained again
    assert checkpoint_steps(weights_dir(server, pid, eid) / "last.ckpt") == 3 * STEPS_PER_EPOCH
    events = read_sse(server.http, f"/api/training/{pid}/experiments/{eid}/stream")
    assert [(e[1]["epoch"], e[2]) for e in events if e[0] == "epoch_end"] == [(1, "1"), (2, "2"), (3, "3")]


def test_a_failed_run_frees_the_slot(server, dataset):
    pid, sid = project_with_split(server.http, server.import_root, per_class=4, ratios=(0.5, 0.25, 0.25))
    eid = create_experiment(server.http, pid, sid, epochs=1, batch_size=2, name="doomed")
    train = server.http.get(f"/api/datasets/{pid}/images", params={"split_id": sid, "subset": "train", "limit": 500})
    missing = train.json()["data"]["items"][0]["filename"]
    (server.settings.workspace / "projects" / pid / "dataset" / "images" / missing).unlink()

    assert run(server.http, pid, eid).status_code == 202
    exp = wait_experiment(server.http, pid, eid)
    assert (exp["status"], exp["epochs_done"], exp["history"]) == ("failed", 0, [])
    assert missing in exp["error"]
    assert "failed: " in server.http.get(f"/api/training/{pid}/experiments/{eid}/logs").text

    good_pid, good_sid = dataset
    after = create_experiment(server.http, good_pid, good_sid, epochs=1, name="after-failure")
    assert run(server.http, good_pid, after).status_code == 202
    exp = wait_experiment(server.http, good_pid, after)
    assert (exp["status"], exp["epochs_done"]) == ("completed", 1)
