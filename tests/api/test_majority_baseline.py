"""Issue #13, item 3: a chance-level model must not look like a result. The majority-class
baseline (always answering the most frequent class of the same images) sits beside every
classification accuracy — `majority_baseline`, `beats_baseline`, `baseline_warning` on experiments
and evaluations — and a run that does not beat it is flagged on the page.

Here: the pure rule, and the experiment fields through the in-process API and its page, with the
epochs written by `store.runs.record_epoch` (what the Train worker's callback calls). The
evaluation of a model that answers one class, through real Ray and the browser, is
tests/browser/test_baseline_flag.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from appliance.services import baselines
from appliance.store import runs
from tests.api.test_detection_classes import make_crowded_yolo, make_split
from tests.fixtures import create_project, import_and_wait, list_all_images, make_classification_folder
from tests.htmlq import parse

# ------------------------------------------------------------------------------- the rule


def test_majority_is_the_most_frequent_class_ties_to_the_first():
    assert baselines.majority({"ants": 39, "bees": 21, "wasps": 20}, ["ants", "bees", "wasps"]) == {
        "class_name": "ants", "count": 39, "total": 80, "share": 39 / 80}
    assert baselines.majority({"a": 2, "b": 2}, ["b", "a"])["class_name"] == "b"
    assert baselines.majority({"a": 0, "b": 3}, ["a", "b"])["class_name"] == "b"
    assert baselines.majority({}, ["a", "b"]) is None
    assert baselines.majority({"stray": 4}, ["a"]) is None  # only the experiment's classes count


def test_beats_needs_one_more_image_right():
    b = baselines.majority({"ants": 39, "bees": 21, "wasps": 20}, ["ants", "bees", "wasps"])
    # Lightning's float32 average of a one-class model: 0.48750001192..., not a win
    assert not baselines.beats(float(np.float32(39 / 80)), b)
    assert not baselines.beats(38 / 80, b)
    assert baselines.beats(40 / 80, b)
    assert baselines.beats(float(np.float32(40 / 80)), b)
    assert baselines.beats(None, b) is None and baselines.beats(0.9, None) is None
    assert baselines.fields(39 / 80, b)["baseline_warning"] == "No better than always answering 'ants' (48.8%)"
    assert baselines.fields(0.9, b) == {"majority_baseline": b, "beats_baseline": True, "baseline_warning": None}


def test_evaluation_baseline_reads_the_truth_rows():
    metrics = {"task": "classification", "accuracy": 0.5,
               "confusion_matrix": {"labels": ["cat", "dog"], "matrix": [[1, 2], [0, 1]]}}  # truth: cat 3, dog 1
    out = baselines.for_evaluation(metrics)
    assert out["majority_baseline"] == {"class_name": "cat", "count": 3, "total": 4, "share": 0.75}
    assert out["beats_baseline"] is False
    assert baselines.for_evaluation({"task": "detection", "map": 0.1}) == {
        "majority_baseline": None, "beats_baseline": None, "baseline_warning": None}
    assert baselines.for_evaluation({})["majority_baseline"] is None


# ------------------------------------------------------------------------------- experiments


@pytest.fixture
def classifier(client, settings):
    """A classification project (ants 6, bees 4, wasps 3 images), split, one experiment, no epochs."""
    source = settings.allowed_import_roots[0] / "insects"
    for cls, n in (("ants", 6), ("bees", 4), ("wasps", 3)):
        make_classification_folder(source, classes=(cls,), per_class=n, size=32, seed=len(cls) * n)
    pid = create_project(client, "classification")
    assert import_and_wait(client, pid, source)["status"] == "completed"
    sid = make_split(client, pid)
    r = client.post(f"/api/training/{pid}/experiments", json={
        "name": "chance", "split_id": sid, "model": "resnet18", "epochs": 3, "batch_size": 2, "image_size": 32})
    assert r.status_code == 201, r.text
    # The expected baseline, counted from the images API, not from the code under test.
    val = Counter(im["label"] for im in list_all_images(client, pid, split_id=sid, subset="val"))
    name = sorted(val, key=lambda c: (-val[c], c))[0]
    return pid, r.json()["data"]["id"], {"class_name": name, "count": val[name], "total": sum(val.values()),
                                         "share": val[name] / sum(val.values())}


def epoch(n: int, val_metric: float) -> dict:
    return {"epoch": n, "epochs": 3, "train_loss": 1.0, "val_loss": 1.0, "val_metric": val_metric, "lr": 1e-3,
            "seconds": 1.0, "images_per_s": 10.0}


def test_experiment_flags_a_run_at_the_majority_share(client, settings, classifier):
    pid, eid, expected = classifier
    url = f"/api/training/{pid}/experiments/{eid}"
    fresh = client.get(url).json()["data"]
    assert fresh["majority_baseline"] == expected
    assert fresh["beats_baseline"] is None and fresh["baseline_warning"] is None  # no epoch yet

    # A model that answers the majority class for every val image, as Lightning reports it (float32).
    runs.record_epoch(settings.db_url, eid, epoch(1, float(np.float32(expected["share"]))))
    exp = client.get(url).json()["data"]
    assert exp["beats_baseline"] is False
    warning = f"No better than always answering '{expected['class_name']}' ({expected['share']:.1%})"
    assert exp["baseline_warning"] == warning
    listed = {e["id"]: e for e in client.get(f"/api/training/{pid}/experiments").json()["data"]}[eid]
    assert listed["beats_baseline"] is False and listed["majority_baseline"] == expected

    # The page: the experiment row carries the badge and the baseline beside the best metric.
    row = parse(client.get(f"/projects/{pid}/training").text).select_one(f"tr.exp-row[data-experiment-id={eid}]")
    assert warning in row.select_one(".baseline-flag").text
    assert f"{expected['share']:.4f}" in row.select_one(".baseline-note").text

    # One val image more right than the baseline: no flag any more.
    runs.record_epoch(settings.db_url, eid, epoch(2, (expected["count"] + 1) / expected["total"]))
    exp = client.get(url).json()["data"]
    assert exp["beats_baseline"] is True and exp["baseline_warning"] is None
    row = parse(client.get(f"/projects/{pid}/training").text).select_one(f"tr.exp-row[data-experiment-id={eid}]")
    assert not row.select(".baseline-flag")


def test_detection_experiments_have_no_majority_baseline(client, settings):
    make_crowded_yolo(settings.allowed_import_roots[0] / "crowded", n=4)
    pid = create_project(client, "detection")
    assert import_and_wait(client, pid, settings.allowed_import_roots[0] / "crowded")["status"] == "completed"
    sid = make_split(client, pid)
    r = client.post(f"/api/training/{pid}/experiments", json={
        "name": "ssd", "split_id": sid, "model": "ssdlite320_mobilenet_v3_large", "epochs": 1, "batch_size": 1,
        "image_size": 64})
    assert r.status_code == 201, r.text
    eid = r.json()["data"]["id"]
    runs.record_epoch(settings.db_url, eid, epoch(1, 0.0))
    exp = client.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
    assert (exp["majority_baseline"], exp["beats_baseline"], exp["baseline_warning"]) == (None, None, None)
