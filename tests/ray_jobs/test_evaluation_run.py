"""Evaluation through the real server: Ray tasks (num_gpus=0 here), metrics, samples, try-one-image.

Every expected value is computed here from the dataset itself (the images API: each image's label
and split subset), never read back from the evaluation: the samples must be exactly the subset's
images, each sample's prediction must be what "try one image" answers for that image, and the
metrics must be what those predictions give.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fixtures import list_all_images
from tests.workflows import create_experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray


def wait_evaluation(http, pid, evid):
    return wait_for(lambda: http.get(f"/api/evaluation/{pid}/{evid}").json()["data"],
                    lambda e: e["status"] in ("completed", "failed"), timeout=180, every=0.5)


def all_samples(http, pid, evid, **params) -> tuple[list[dict], int]:
    """Every sample of an evaluation matching `params` (all pages), and the total the API reports."""
    items, offset = [], 0
    while True:
        r = http.get(f"/api/evaluation/{pid}/{evid}/samples", params={"offset": offset, "limit": 7, **params})
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        items += page["items"]
        offset += 7
        if offset >= page["total"]:
            assert len(items) == page["total"]
            return items, page["total"]


@pytest.fixture(scope="module")
def evaluations(server, trained_classifier):
    """Two evaluations requested back to back (they run at once in the evaluation lane): test/best
    and val/last, each with the subset's images from the images API as {image_id: label}."""
    pid, sid, eid = trained_classifier
    runs = []
    for subset, checkpoint in (("test", "best"), ("val", "last")):
        r = server.http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": subset,
                                                          "checkpoint": checkpoint})
        assert r.status_code == 202, r.text
        runs.append((subset, checkpoint, r.json()["data"]["id"]))
    out = []
    for subset, checkpoint, evid in runs:
        ev = wait_evaluation(server.http, pid, evid)
        truth = {im["id"]: im["label"] for im in list_all_images(server.http, pid, split_id=sid, subset=subset)}
        out.append({"subset": subset, "checkpoint": checkpoint, "ev": ev, "truth": truth})
    return pid, eid, out


def test_two_evaluations_at_once_both_complete(server, evaluations):
    pid, _, runs = evaluations
    for run in runs:
        assert run["ev"]["status"] == "completed", run["ev"]
        assert run["ev"]["metrics"]["task"] == "classification"
    listed = server.http.get(f"/api/evaluation/{pid}").json()["data"]
    assert {e["id"] for e in listed} >= {run["ev"]["id"] for run in runs}


def test_samples_are_the_subset_and_metrics_follow_from_them(server, evaluations):
    pid, _, runs = evaluations
    for run in runs:
        ev, truth = run["ev"], run["truth"]
        m = ev["metrics"]
        samples, total = all_samples(server.http, pid, ev["id"], kind="all")
        # one sample per image of the subset, no more, no fewer, each with its dataset label
        assert len(truth) > 0 and total == len(truth) == m["num_samples"] == ev["total"] == ev["done"]
        assert sorted(s["image_id"] for s in samples) == sorted(truth)
        assert all(s["label"] == s["true_name"] == truth[s["image_id"]] for s in samples)

        names = m["confusion_matrix"]["labels"]
        assert sorted(names) == ["blue", "red"]
        correct = sum(s["pred_name"] == truth[s["image_id"]] for s in samples)
        assert m["accuracy"] == correct / len(truth)
        # resnet18 learns the generated colours in one epoch: it must beat always answering the
        # subset's most common label
        majority = max(Counter(truth.values()).values()) / len(truth)
        assert m["accuracy"] > majority, (m["accuracy"], majority)

        expected_cm = [[0] * len(names) for _ in names]
        for s in samples:
            expected_cm[names.index(truth[s["image_id"]])][names.index(s["pred_name"])] += 1
        assert m["confusion_matrix"]["matrix"] == expected_cm
        for row in m["per_class"]:
            tp = expected_cm[row["index"]][row["index"]]
            support = sum(expected_cm[row["index"]])
            predicted = sum(r[row["index"]] for r in expected_cm)
            assert row["name"] == names[row["index"]] and row["support"] == support
            assert row["recall"] == pytest.approx(tp / support if support else 0.0, abs=1e-12)
            assert row["precision"] == pytest.approx(tp / predicted if predicted else 0.0, abs=1e-12)

        # each sample's score is the probability of its predicted class, the highest of its top list
        for s in samples:
            assert s["top"][0]["name"] == s["pred_name"] and s["top"][0]["score"] == s["score"]
            assert sum(t["score"] for t in s["top"]) == pytest.approx(1.0, abs=1e-6)  # two classes: all of them


def test_sample_filters(server, evaluations):
    pid, _, runs = evaluations
    ev, truth = runs[0]["ev"], runs[0]["truth"]
    samples, _ = all_samples(server.http, pid, ev["id"], kind="all")
    names = ev["metrics"]["confusion_matrix"]["labels"]

    errors, total = all_samples(server.http, pid, ev["id"], kind="errors")
    wrong = {s["image_id"] for s in samples if s["pred_name"] != truth[s["image_id"]]}
    assert total == len(wrong) and {s["image_id"] for s in errors} == wrong
    scores = [s["score"] for s in errors]
    assert scores == sorted(scores, reverse=True)  # most confident mistakes first

    for label in names:
        items, _ = all_samples(server.http, pid, ev["id"], kind="all", label=label)
        assert {s["image_id"] for s in items} == {i for i, name in truth.items() if name == label}
    for t, true_name in enumerate(names):
        for p, pred_name in enumerate(names):
            items, _ = all_samples(server.http, pid, ev["id"], kind="all", cell=f"{t},{p}")
            expected = {s["image_id"] for s in samples if truth[s["image_id"]] == true_name and s["pred_name"] == pred_name}
            assert {s["image_id"] for s in items} == expected, (t, p)


def test_each_sample_agrees_with_try_one_image(server, evaluations):
    pid, eid, runs = evaluations
    for run in runs:
        samples, _ = all_samples(server.http, pid, run["ev"]["id"], kind="all")
        for s in samples:
            r = server.http.post(f"/api/evaluation/{pid}/predict",
                                 data={"experiment_id": eid, "image_id": s["image_id"], "checkpoint": run["checkpoint"]})
            assert r.status_code == 200, r.text
            one = r.json()["data"]
            assert one["class_name"] == s["pred_name"], (s["image_id"], one, s)
            probs = dict(zip(one["classes"], one["probs"], strict=True))
            assert {t["name"]: t["score"] for t in s["top"]} == pytest.approx(probs, abs=1e-5)


def test_try_one_image(server, trained_classifier):
    """By image id and by upload of the same bytes: the same answer, for that image's size. (That the
    answer is the model's, image by image, is test_each_sample_agrees_with_try_one_image.)"""
    pid, sid, eid = trained_classifier
    image = list_all_images(server.http, pid, split_id=sid, subset="test")[0]
    r = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid, "image_id": image["id"]})
    assert r.status_code == 200, r.text
    by_id = r.json()["data"]
    assert by_id["classes"] == ["blue", "red"] and by_id["class_name"] == by_id["classes"][by_id["probs"].index(max(by_id["probs"]))]
    assert (by_id["image_id"], by_id["width"], by_id["height"]) == (image["id"], image["width"], image["height"])
    raw = server.http.get(image["url"]).content
    r = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid},
                         files={"file": ("x.jpg", raw, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["class_name"] == by_id["class_name"]
    assert r.json()["data"]["probs"] == pytest.approx(by_id["probs"], abs=1e-6)
    r = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid},
                         files={"file": ("bad.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 400 and "bad.jpg" in r.json()["error"]["message"]


def test_delete_evaluation(server, trained_classifier):
    pid, _, eid = trained_classifier
    r = server.http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": "val"})
    assert r.status_code == 202, r.text
    evid = r.json()["data"]["id"]
    assert wait_evaluation(server.http, pid, evid)["status"] == "completed"
    assert server.http.delete(f"/api/evaluation/{pid}/{evid}").status_code == 200
    assert server.http.get(f"/api/evaluation/{pid}/{evid}").status_code == 404
    assert evid not in {e["id"] for e in server.http.get(f"/api/evaluation/{pid}").json()["data"]}


def test_bad_evaluation_requests(server, trained_classifier):
    pid, sid, eid = trained_classifier
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
