"""Issue #12 item 8: "try one image" cannot hang the API.

The appliance runs as its own process (tests/recovery/appliance_process.py) on a Ray that declares
ONE CPU and no GPU. A 1000-epoch training run holds that CPU, so a prediction's Ray task cannot be
scheduled at all — the state of a host whose GPU share (or CPUs) a training run holds. 48 "try one
image" requests arrive at once, more than the server's threadpool (40): before the fix each waited on
its Ray task forever in a threadpool thread, and health and every other route stopped answering.
Now a few wait (AISTUDIO_MAX_CONCURRENT_PREDICTIONS) at most AISTUDIO_PREDICT_TIMEOUT_S, the rest are
refused at once; all get 503 with Retry-After, while health and GET /api/projects keep answering.
Once the run is stopped, a prediction works again.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.recovery.appliance_process import appliance_in
from tests.workflows import create_experiment, experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray

PREDICTS = 48
SLOTS = 2
TIMEOUT_S = 10


@pytest.fixture
def appliance(tmp_path):
    yield from appliance_in(tmp_path, cpus=1, env={
        "AISTUDIO_PREDICT_TIMEOUT_S": str(TIMEOUT_S), "AISTUDIO_MAX_CONCURRENT_PREDICTIONS": str(SLOTS)})


def test_predictions_that_cannot_get_compute_time_out_and_never_stall_the_api(appliance):
    http = appliance.start()
    pid, sid = project_with_split(http, appliance.import_root, per_class=6, ratios=(0.5, 0.25, 0.25))
    trained = create_experiment(http, pid, sid, epochs=1, name="trained")
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": trained}).status_code == 202
    assert wait_experiment(http, pid, trained)["status"] == "completed"
    image_id = http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]["id"]
    form = {"experiment_id": trained, "image_id": image_id}
    r = http.post(f"/api/evaluation/{pid}/predict", data=form)
    assert r.status_code == 200, r.text  # with the CPU free it answers

    # A long run takes the only CPU: its Train worker holds it while it trains.
    long_run = create_experiment(http, pid, sid, epochs=1000, name="long")
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": long_run}).status_code == 202
    wait_for(lambda: appliance.find("ray::RayTrainWorker"), bool, timeout=300, every=0.2)
    wait_for(lambda: experiment(http, pid, long_run), lambda e: e["epochs_done"] >= 1, timeout=300, every=0.5)

    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def try_one(_):
        with httpx.Client(base_url=appliance.url, timeout=120) as c:
            response = c.post(f"/api/evaluation/{pid}/predict", data=form)
        with lock:
            answers.append(response)
        return response

    refused_at_once = PREDICTS - SLOTS
    with ThreadPoolExecutor(PREDICTS) as pool:
        futures = [pool.submit(try_one, i) for i in range(PREDICTS)]
        # All but the admitted few are refused at once; those few now wait on a task Ray cannot place.
        wait_for(lambda: len(answers), lambda n: n >= refused_at_once, timeout=60, every=0.1)
        with lock:
            early = list(answers)
        # The API answers meanwhile — health included — from a client with a short timeout.
        with httpx.Client(base_url=appliance.url, timeout=10) as probe:
            for _ in range(5):
                assert probe.get("/api/system/health").status_code == 200
                projects = probe.get("/api/projects")
                assert projects.status_code == 200 and pid in [p["id"] for p in projects.json()["data"]["items"]]
        results = [f.result() for f in futures]

    for response in early:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "UNAVAILABLE"
        assert "Too many" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) > 0
    timed_out = [r for r in results if "did not finish" in r.text]
    assert len(timed_out) == SLOTS
    for response in results:
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0, response.text

    # The run stops; the CPU is free again and the cancelled tasks do not stand in the way.
    assert http.post(f"/api/training/{pid}/experiments/{long_run}/stop").status_code == 200
    assert wait_experiment(http, pid, long_run)["status"] == "stopped"
    r = http.post(f"/api/evaluation/{pid}/predict", data=form)
    assert r.status_code == 200, r.text
    http.close()
