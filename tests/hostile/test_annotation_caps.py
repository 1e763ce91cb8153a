"""Issue #12 item 3: annotation files are parsed in the import job's own worker process, with a cap.

- Annotation content over `AISTUDIO_MAX_ANNOTATION_BYTES` (each COCO JSON or CSV file, all YOLO
  label files together) is refused before it is read: INVALID_DATASET naming the file, the limit
  and the setting; the import fails with that message and the dataset is unchanged.
- The parse runs in another process than the web app: the worker records its pid, and a big
  (under the cap) COCO file leaves the web process's peak RSS where it was.
- A worker killed mid-import (as the kernel's OOM killer does) fails its import with a message —
  no hang, dataset unchanged, nothing staged; a worker stuck where it cannot see a cancel is
  killed, and the import is cancelled.

The in-process app is the web process here (the ingress is not the point): its memory is this
test process's.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.config import Settings
from appliance.importers import parse_source
from appliance.main import create_app
from appliance.services import datasets as service
from appliance.store.errors import InvalidDataset
from tests.fixtures import (
    create_project, import_and_wait, list_all_images, make_classification_folder, make_detection_coco,
    make_detection_csv, make_detection_yolo, save_image, class_image, start_path_import, wait_import, zip_dir,
)
from tests.hostile.import_worker_hooks import hook, release, started
from tests.workflows import wait_for

LIMIT = 50_000
COCO_FILE = "annotations/instances_default.json"


@pytest.fixture
def make_client(tmp_path):
    opened = []

    def make(**overrides) -> tuple[TestClient, Settings]:
        (tmp_path / "imports").mkdir(exist_ok=True)
        settings = Settings(workspace=tmp_path / "ws", import_roots=[tmp_path / "imports"], api_token=None, **overrides)
        client = TestClient(create_app(settings))
        opened.append(client.__enter__())
        return client, settings

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def padded_coco(root: Path, size_at_least: int) -> Path:
    """A valid COCO dataset whose JSON holds at least `size_at_least` bytes (repeated boxes)."""
    make_detection_coco(root, n=4, size=64)
    path = root / COCO_FILE
    doc = json.loads(path.read_text())
    first = doc["annotations"][0]
    while len(json.dumps(doc)) < size_at_least:
        doc["annotations"] += [{**first, "id": len(doc["annotations"]) + 1} for _ in range(200)]
    path.write_text(json.dumps(doc))
    return root


def files_and_rows(client, settings: Settings, pid: str) -> tuple[list[str], list[str]]:
    folder = settings.workspace / "projects" / pid / "dataset" / "images"
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return files, sorted(i["filename"] for i in list_all_images(client, pid))


def staging(settings: Settings) -> list[str]:
    folder = settings.workspace / "staging"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# --------------------------------------------------------------------------- the cap


def test_coco_over_the_cap_fails_the_import_naming_the_file(make_client, tmp_path):
    client, settings = make_client(max_annotation_bytes=LIMIT)
    root = settings.allowed_import_roots[0]
    pid = create_project(client, task="detection")
    before = import_and_wait(client, pid, make_detection_coco(root / "small", n=4, size=64).root)
    assert before["status"] == "completed"
    state = files_and_rows(client, settings, pid)

    big = padded_coco(root / "big", LIMIT + 1)
    size = (big / COCO_FILE).stat().st_size
    expected = (f"{COCO_FILE}: the annotation file holds {size} bytes, over the limit of {LIMIT} bytes "
                "(AISTUDIO_MAX_ANNOTATION_BYTES)")
    job = import_and_wait(client, pid, big, timeout=120)
    assert job["status"] == "failed" and job["error"] == expected, job
    upload = import_and_wait(client, pid, zip_dir(big, tmp_path / "big.zip"), timeout=120)
    assert upload["status"] == "failed" and upload["error"] == expected, upload
    assert files_and_rows(client, settings, pid) == state and staging(settings) == []


@pytest.mark.parametrize("kind", ["coco", "csv", "yolo"])
def test_parse_source_refuses_annotations_over_the_cap(tmp_path, kind):
    if kind == "coco":
        root, first = padded_coco(tmp_path / "ds", 2000), COCO_FILE
        limit = (root / first).stat().st_size - 1
        expected = f"{first}: the annotation file holds {limit + 1} bytes, over the limit of {limit} bytes"
    elif kind == "csv":
        root, first = make_detection_csv(tmp_path / "ds", n=6, size=48).root, "annotations.csv"
        limit = (root / first).stat().st_size - 1
        expected = f"{first}: the annotation file holds {limit + 1} bytes, over the limit of {limit} bytes"
    else:  # every label file is small; together they are over
        root = make_detection_yolo(tmp_path / "ds", n=12, size=48).root
        files = [root / "data.yaml"] + sorted((root / "labels").iterdir())
        total = sum(p.stat().st_size for p in files)
        limit, last = total - 1, files[-1]
        expected = (f"labels/{last.name}: with it the yolo annotation files hold {total} bytes together, "
                    f"over the limit of {limit} bytes")
    with pytest.raises(InvalidDataset) as caught:
        parse_source(root, "auto", "detection", max_annotation_bytes=limit)
    assert caught.value.code == "INVALID_DATASET"
    assert caught.value.message == expected + " (AISTUDIO_MAX_ANNOTATION_BYTES)"
    assert len(parse_source(root, "auto", "detection", max_annotation_bytes=limit + 1).items) > 0


# --------------------------------------------------------------------------- where the parse runs


def test_the_parse_runs_in_the_import_worker_process(client, settings, monkeypatch):
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("held"))  # records its pid, waits for <root>.release
    pid = create_project(client)
    source = make_classification_folder(settings.allowed_import_roots[0] / "f", per_class=2).root
    r = start_path_import(client, pid, source)
    assert r.status_code == 202, r.text
    wait_for(started(source).exists, bool, timeout=60, every=0.05)
    worker = int(started(source).read_text())
    assert worker != os.getpid()  # not the web app's process
    assert Path(f"/proc/{worker}").exists()
    release(source).touch()
    assert wait_import(client, pid, r.json()["data"]["id"], timeout=120)["status"] == "completed"


def big_coco(root: Path, boxes: int) -> Path:
    """4 images and `boxes` valid boxes, written as a stream (the test holds none of it)."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    import random

    rng = random.Random(0)
    for i in range(4):
        save_image(class_image((40 * i, 90, 200), 64, rng), root / "images" / f"{i}.jpg")
    with (root / COCO_FILE).open("w") as f:
        f.write('{"categories": [{"id": 1, "name": "thing"}], "images": [')
        f.write(", ".join(f'{{"id": {i}, "file_name": "{i}.jpg", "width": 64, "height": 64}}' for i in range(4)))
        f.write('], "annotations": [')
        for n in range(boxes):
            sep = ", " if n else ""
            f.write(f'{sep}{{"id": {n}, "image_id": {n % 4}, "category_id": 1, "iscrowd": 0, '
                    f'"bbox": [{n % 30}.5, {n % 29}.25, 20.0, 21.0], "area": 420.0}}')
        f.write("]}")
    return root


def test_big_annotations_do_not_grow_the_web_process(client, settings):
    """250k boxes (~30 MB of JSON) parse into a few hundred MB of Python objects: in the worker."""
    source = big_coco(settings.allowed_import_roots[0] / "big", boxes=250_000)
    pid = create_project(client, task="detection")
    before = peak_rss_bytes()
    job = import_and_wait(client, pid, source, timeout=600)
    assert job["status"] == "completed" and job["added"] == 4, job
    assert client.get(f"/api/datasets/{pid}").json()["data"]["box_count"] == 250_000
    grown = peak_rss_bytes() - before
    assert grown < 100 * 2**20, f"the web process's peak RSS grew by {grown / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- a worker that dies or hangs


def test_a_worker_killed_mid_import_fails_it_cleanly(client, settings, monkeypatch):
    root = settings.allowed_import_roots[0]
    pid = create_project(client)
    assert import_and_wait(client, pid, make_classification_folder(root / "a", per_class=3).root)["added"] == 6
    state = files_and_rows(client, settings, pid)
    # SIGKILLed after moving every file into the dataset folder, before inserting the rows.
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("killed_in_commit"))
    job = import_and_wait(client, pid, make_classification_folder(root / "b", per_class=4, seed=3).root, timeout=120)
    assert job["status"] == "failed" and job["added"] == 0, job
    assert job["error"] == ("The import's worker process was killed (SIGKILL), most likely for lack of memory; "
                            "the dataset is unchanged")
    assert files_and_rows(client, settings, pid) == state and staging(settings) == []
    monkeypatch.undo()  # the next import runs normally
    assert import_and_wait(client, pid, make_classification_folder(root / "c", per_class=2, seed=4).root)["added"] == 4


def test_cancel_kills_a_worker_that_cannot_notice_it(client, settings, monkeypatch):
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("stuck"))  # never returns from parsing
    monkeypatch.setattr(service, "CANCEL_GRACE_S", 3600)  # until the listing below is checked
    pid = create_project(client)
    source = make_classification_folder(settings.allowed_import_roots[0] / "f", per_class=2).root
    job_id = start_path_import(client, pid, source).json()["data"]["id"]
    wait_for(started(source).exists, bool, timeout=60, every=0.05)
    worker = int(started(source).read_text())
    jobs = client.get("/api/system/jobs").json()["data"]
    assert [(j["id"], j["status"]) for j in jobs] == [(job_id, "running")]
    r = client.delete(f"/api/datasets/{pid}/imports/{job_id}")
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelling"
    # Still a job while it is being cancelled (its worker holds the import lane).
    jobs = client.get("/api/system/jobs").json()["data"]
    assert [(j["id"], j["status"]) for j in jobs] == [(job_id, "cancelling")]
    monkeypatch.setattr(service, "CANCEL_GRACE_S", 0.5)  # the supervisor reads it on each poll
    job = wait_import(client, pid, job_id, timeout=120)
    assert job["status"] == "cancelled" and job["error"] == "Cancelled by the user; the dataset is unchanged", job
    assert not Path(f"/proc/{worker}").exists()
    assert staging(settings) == [] and files_and_rows(client, settings, pid) == ([], [])
