"""Evaluation through the real server: Ray tasks (num_gpus=0 here), metrics, samples, try-one-image."""

from __future__ import annotations

import pytest

from tests.workflows import create_experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def trained(trained_classifier):
    return trained_classifier


def wait_evaluation(http, pid, evid):
    return wait_for(lambda: http.get(f"/api/evaluation/{pid}/{evid}").json()["data"],
                    lambda e: e["status"] in ("completed", "failed"), timeout=180, every=0.5)


def test_two_evaluations_at_once_both_complete_with_metrics(server, trained):
    pid, _, eid = trained
    ids = []
    for subset, checkpoint in (("test", "best"), ("val", "last")):
        r = server.http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": subset,
                                                          "checkpoint": checkpoint})
        assert r.status_code == 202, r.text
        ids.append(r.json()["data"]["id"])
    results = [wait_evaluation(server.http, pid, evid) for evid in ids]
    for ev in results:
        assert ev["status"] == "completed", ev
        m = ev["metrics"]
        assert m["task"] == "classification" and 0 <= m["accuracy"] <= 1
        assert m["num_samples"] == ev["total"] == ev["done"]
        cm = m["confusion_matrix"]["matrix"]
        assert sum(map(sum, cm)) == m["num_samples"]
        assert m["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(len(cm))) / m["num_samples"])
        assert {c["name"] for c in m["per_class"]} == {"blue", "red"}
    listed = server.http.get(f"/api/evaluation/{pid}").json()["data"]
    assert {e["id"] for e in listed} >= set(ids)

    samples = server.http.get(f"/api/evaluation/{pid}/{ids[0]}/samples?kind=all").json()["data"]
    assert samples["total"] == results[0]["total"]
    errors = server.http.get(f"/api/evaluation/{pid}/{ids[0]}/samples?kind=errors").json()["data"]
    assert errors["total"] == results[0]["total"] - sum(results[0]["metrics"]["confusion_matrix"]["matrix"][i][i] for i in range(2))
    scores = [s["score"] for s in errors["items"]]
    assert scores == sorted(scores, reverse=True)  # most confident mistakes first
    cell = server.http.get(f"/api/evaluation/{pid}/{ids[0]}/samples?kind=all&cell=0,0").json()["data"]
    assert cell["total"] == results[0]["metrics"]["confusion_matrix"]["matrix"][0][0]

    assert server.http.delete(f"/api/evaluation/{pid}/{ids[1]}").status_code == 200
    assert server.http.get(f"/api/evaluation/{pid}/{ids[1]}").status_code == 404


def test_try_one_image(server, trained):
    pid, _, eid = trained
    image = server.http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
    r = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid, "image_id": image["id"]})
    assert r.status_code == 200, r.text
    by_id = r.json()["data"]
    assert by_id["class_name"] in ("red", "blue") and len(by_id["probs"]) == 2
    raw = server.http.get(image["url"]).content
    r = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid},
                         files={"file": ("x.jpg", raw, "image/jpeg")})
    assert r.status_code == 200 and r.json()["data"]["probs"] == pytest.approx(by_id["probs"], abs=1e-5)
    r = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid},
                         files={"file": ("bad.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 400 and "bad.jpg" in r.json()["error"]["message"]


def test_bad_evaluation_requests(server, trained):
    pid, sid, eid = trained
    never = create_experiment(server.http, pid, sid, name="never-trained")
    cases = [
        ({"experiment_id": "exp-000000000000"}, 404, "exp-000000000000"),
        ({"experiment_id": never}, 422, "train it first"),
        ({"experiment_id": eid, "subset": "train"}, 422, "subset"),
        ({"experiment_id": eid, "checkpoint": "middle"}, 422, "checkpoint"),
    ]
    for body, status, fragment in cases:
        r = server.http.post("/api/evaluation/run", json={"project_id": pid, **body})
        assert r.status_code == status and fragment in r.json()["error"]["message"], (body, r.text)
    other_pid, _ = project_with_split(server.http, server.import_root, per_class=4)
    r = server.http.post("/api/evaluation/run", json={"project_id": other_pid, "experiment_id": eid})
    assert r.status_code == 404
    # A split without a test subset
    sid2 = server.http.post(f"/api/splits/{pid}", json={"name": "notest", "train": 0.7, "val": 0.3, "test": 0}).json()["data"]["id"]
    e2 = create_experiment(server.http, pid, sid2, epochs=1, name="notest")
    assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": e2}).status_code == 202
    assert wait_experiment(server.http, pid, e2)["status"] == "completed"
    r = server.http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": e2, "subset": "test"})
    assert r.status_code == 422 and "no test images" in r.json()["error"]["message"]
