"""Issue #13, item 1, through real Ray and the Serve ingress: a detection project whose minority
classes (blue, green) only ever appear beside a majority class (red: three boxes in every image)
trains a head for all three classes and evaluates all three — per-class AP rows, ground-truth
counts, the confusion matrix, the gallery's class filter. Before the fix the experiment knew only
`red` (each image's "dominant" class) and the blue and green boxes were not ground truth.

Cheap on purpose: 8 images of 64 px, SSDLite from random weights for one epoch. Nothing here
depends on the detector being any good: only on which classes it has and which boxes count."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from appliance.store.paths import Workspace
from tests.api.test_detection_classes import make_crowded_yolo, make_split
from tests.fixtures import create_project, list_all_images
from tests.workflows import create_experiment, import_folder, wait_experiment, wait_for

pytestmark = pytest.mark.ray

CLASSES = ["blue", "green", "red"]


def test_minority_classes_are_trained_and_evaluated(server):
    http = server.http
    source = server.import_root / f"crowded-{uuid.uuid4().hex[:8]}"
    truth = make_crowded_yolo(source)
    pid = create_project(http, "detection", name="crowded")
    import_folder(http, pid, source)
    sid = make_split(http, pid)

    eid = create_experiment(http, pid, sid, name="ssd-all-classes", model="ssdlite320_mobilenet_v3_large",
                            epochs=1, batch_size=2, image_size=64, augmentations=[])
    exp = http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
    assert exp["class_names"] == CLASSES
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(http, pid, eid, timeout=600)["status"] == "completed"

    # The trained head: the checkpoint the run wrote has every class (what evaluation, "try one
    # image" and the export's label list read).
    from ray_jobs.core.inference import load_checkpoint

    ckpt = Workspace(server.settings.workspace).experiment_dir(pid, eid) / "weights" / "best.ckpt"
    model, meta = load_checkpoint(ckpt)
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 3
    head = model.head.classification_head.module_list[0][-1]
    assert head.out_channels % (len(CLASSES) + 1) == 0  # classes + background per anchor
    assert head.out_channels // (len(CLASSES) + 1) == model.anchor_generator.num_anchors_per_location()[0]

    r = http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": "test", "checkpoint": "best"})
    assert r.status_code == 202, r.text
    evid = r.json()["data"]["id"]
    ev = wait_for(lambda: http.get(f"/api/evaluation/{pid}/{evid}").json()["data"],
                  lambda e: e["status"] in ("completed", "failed"), timeout=300, every=0.5)
    assert ev["status"] == "completed", ev

    # Ground truth: every box of the test images, counted per class from the generator's truth.
    test_images = list_all_images(http, pid, split_id=sid, subset="test")
    assert test_images
    expected = Counter(b.label for im in test_images for b in truth[im["original_name"].split("/")[-1]])
    assert set(expected) == set(CLASSES)
    metrics = ev["metrics"]
    assert [row["name"] for row in metrics["per_class"]] == CLASSES
    assert {row["name"]: row["num_gt"] for row in metrics["per_class"]} == dict(expected)
    cm = metrics["confusion_matrix"]
    assert cm["labels"] == [*CLASSES, "background"]
    assert {name: sum(cm["matrix"][i]) for i, name in enumerate(CLASSES)} == dict(expected)

    # The gallery: each minority class filters to the test images that hold it (all of them here).
    for label in ("blue", "green"):
        page = http.get(f"/api/evaluation/{pid}/{evid}/samples", params={"kind": "all", "label": label}).json()["data"]
        assert page["total"] == len(test_images)
        assert all(CLASSES.index(label) in item["gt"]["labels"] for item in page["items"])
