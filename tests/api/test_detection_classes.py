"""Issue #13, item 1: a detector must know every class its boxes name, not only each image's
"dominant" (most frequent) box class. Fast, in-process: import a YOLO set whose minority classes
only ever appear beside a majority class, split it, create an experiment, and read its class list.
The Ray run (train, evaluate) is tests/ray_jobs/test_detection_all_classes.py."""

from __future__ import annotations

import random
from pathlib import Path

from appliance.services.class_list import split_class_names
from appliance.store.db import session_scope
from tests.fixtures import GenBox, colour_of, create_project, import_and_wait, make_classification_folder, save_image

MAJORITY, MINORITY = "red", ("blue", "green")
PER_IMAGE = {MAJORITY: 3, "blue": 1, "green": 1}  # red is the most frequent box class of every image


def make_crowded_yolo(root: Path, n: int = 8, size: int = 64, seed: int = 13) -> dict[str, list[GenBox]]:
    """YOLO layout (`images/`, `labels/`, `data.yaml`) where every image holds three red boxes, one
    blue and one green, side by side in a row of cells: blue and green are never an image's most
    frequent class. Returns image file name → its boxes (pixels)."""
    from PIL import Image

    rng = random.Random(seed)
    names = [MAJORITY, *MINORITY]
    truth = {}
    cell = size // 5
    for i in range(n):
        im = Image.new("RGB", (size, size), (128, 128, 128))
        im = Image.blend(im, Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)), 0.3)
        labels = [label for label, count in PER_IMAGE.items() for _ in range(count)]
        rng.shuffle(labels)
        boxes, lines = [], []
        for k, label in enumerate(labels):
            x1, y1 = k * cell + 1, rng.randint(0, size - cell)
            box = GenBox(float(x1), float(y1), float(x1 + cell - 2), float(y1 + cell - 2), label)
            im.paste(colour_of(label), (int(box.x1), int(box.y1), int(box.x2), int(box.y2)))
            boxes.append(box)
            cx, cy = (box.x1 + box.x2) / 2 / size, (box.y1 + box.y2) / 2 / size
            lines.append(f"{names.index(label)} {cx:.6f} {cy:.6f} {(box.x2 - box.x1) / size:.6f} {(box.y2 - box.y1) / size:.6f}")
        name = f"crowd_{i:03d}.jpg"
        save_image(im, root / "images" / name)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"crowd_{i:03d}.txt").write_text("\n".join(lines) + "\n")
        truth[name] = boxes
    (root / "data.yaml").write_text(f"nc: {len(names)}\nnames: [{', '.join(names)}]\n")
    return truth


def make_split(http, pid: str) -> str:
    r = http.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.25, "test": 0.25, "seed": 1})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def test_detection_experiment_knows_every_box_class(client, settings):
    truth = make_crowded_yolo(settings.allowed_import_roots[0] / "crowded")
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, settings.allowed_import_roots[0] / "crowded")
    assert job["status"] == "completed" and job["added"] == len(truth), job
    # The dataset summary counts classes from the boxes already: all three, each in every image.
    summary = client.get(f"/api/datasets/{pid}").json()["data"]
    assert {c["name"]: c["images"] for c in summary["classes"]} == {"blue": 8, "green": 8, "red": 8}

    sid = make_split(client, pid)
    r = client.post(f"/api/training/{pid}/experiments", json={
        "name": "ssd", "split_id": sid, "model": "ssdlite320_mobilenet_v3_large", "epochs": 1, "batch_size": 2,
        "image_size": 64})
    assert r.status_code == 201, r.text
    exp = r.json()["data"]
    assert exp["class_names"] == ["blue", "green", "red"]
    assert client.get(f"/api/training/{pid}/experiments/{exp['id']}").json()["data"]["class_names"] == ["blue", "green", "red"]
    with session_scope(settings.db_url) as s:
        assert split_class_names(s, sid, "detection") == ["blue", "green", "red"]


def test_classification_class_list_is_the_image_labels(client, settings):
    source = settings.allowed_import_roots[0] / "flowers"
    make_classification_folder(source, per_class=4, size=32, classes=("rose", "daisy", "tulip"))
    pid = create_project(client, "classification")
    assert import_and_wait(client, pid, source)["status"] == "completed"
    sid = make_split(client, pid)
    with session_scope(settings.db_url) as s:
        assert split_class_names(s, sid, "classification") == ["daisy", "rose", "tulip"]
    r = client.post(f"/api/training/{pid}/experiments", json={
        "name": "r18", "split_id": sid, "model": "resnet18", "epochs": 1, "batch_size": 2, "image_size": 32})
    assert r.status_code == 201, r.text
    assert r.json()["data"]["class_names"] == ["daisy", "rose", "tulip"]
