"""Datasets API: imports of every format (by path and by ZIP), bad inputs, atomicity, cancel,
the health summary, browsing, image files and thumbnails.

Most tests run in-process (`client`); `test_every_format_through_serve` and a few others go
through the real Ray Serve proxy (`server`).
"""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from appliance.config import Settings
from appliance.main import create_app
from appliance.services import datasets as service
from tests.pg import both_backends
from tests.fixtures import (
    MAKERS,
    Generated,
    create_project,
    import_and_wait,
    list_all_images,
    make_classification_folder,
    make_detection_coco,
    make_detection_yolo,
    start_path_import,
    start_zip_import,
    wait_import,
    write_corrupt,
    zip_dir,
)
from tests.hostile.import_worker_hooks import hook, release, started
from tests.htmlq import parse

TASK_OF = {"folder": "classification", "folder-nested": "classification", "csv": "classification",
           "csv-boxes": "detection", "coco": "detection", "yolo": "detection"}
DETECTED = {"folder": "Folder layout", "folder-nested": "in train/ + val/", "csv": "CSV:", "csv-boxes": "CSV:",
            "coco": "COCO:", "yolo": "YOLO layout"}
BOX_TOLERANCE = 0.05  # px: YOLO's normalized coordinates are written with 6 decimals


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def root(settings) -> Path:
    """The import root of the in-process app."""
    return settings.allowed_import_roots[0]


def workspace_files(settings) -> set[str]:
    """Every file under the workspace's projects and staging folders (atomicity checks)."""
    ws = settings.workspace
    return {p.relative_to(ws).as_posix() for top in ("projects", "staging") for p in (ws / top).rglob("*") if p.is_file() or p.is_symlink()}


def staging_left(settings) -> list[str]:
    staging = settings.workspace / "staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def error_of(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and body["error"]["code"] == code, body
    return body["error"]["message"]


def dataset_state(client, settings, pid: str) -> tuple[int, set[str]]:
    count = client.get(f"/api/datasets/{pid}").json()["data"]["image_count"]
    images = settings.workspace / "projects" / pid / "dataset" / "images"
    return count, {p.name for p in images.iterdir()} if images.exists() else set()


def check_imported(http, pid: str, gen: Generated, job: dict) -> list[dict]:
    """The job added exactly the generated images, with their labels, boxes, sizes and subsets."""
    assert job["status"] == "completed", job
    assert (job["added"], job["duplicates"], job["skipped"], job["warnings"]) == (gen.count, 0, 0, [])
    assert job["done"] == job["total"] == gen.count
    images = list_all_images(http, pid)
    assert len(images) == gen.count
    expected = gen.by_name()
    assert {im["original_name"] for im in images} == set(expected)
    for im in images:
        item = expected[im["original_name"]]
        assert (im["width"], im["height"]) == (gen.size, gen.size)
        assert im["label"] == item.label
        assert im["subset_hint"] == item.subset
        assert len(im["boxes"]) == len(item.boxes)
        for got, want in zip(im["boxes"], item.boxes):
            assert got["label"] == want.label
            for k in ("x1", "y1", "x2", "y2"):
                assert abs(got[k] - getattr(want, k)) <= BOX_TOLERANCE, (im["original_name"], got, want)
    summary = http.get(f"/api/datasets/{pid}").json()["data"]
    assert summary["image_count"] == gen.count
    assert {c["name"]: c["images"] for c in summary["classes"]} == gen.class_counts()
    return images


def run_format(http, import_root: Path, tmp: Path, kind: str, how: str) -> None:
    gen = MAKERS[kind](import_root / f"{kind}-{how}")
    pid = create_project(http, TASK_OF[kind], name=f"{kind} by {how}")
    if how == "path":
        job = import_and_wait(http, pid, gen.root, fmt=gen.format)
        assert DETECTED[kind] in job["detected"] and not job["detected"].startswith("Auto-detected"), job["detected"]
    else:
        job = import_and_wait(http, pid, zip_dir(gen.root, tmp / f"{kind}.zip"), fmt="auto")
        assert job["detected"].startswith("Auto-detected") and DETECTED[kind] in job["detected"], job["detected"]
        assert job["source"] == f"upload:{kind}.zip"
    check_imported(http, pid, gen, job)


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("how", ["path", "zip"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_every_format_by_path_and_zip(client, root, tmp_path, kind, how):
    run_format(client, root, tmp_path, kind, how)


@pytest.mark.parametrize("names", ["yaml-dict", "classes.txt"])
def test_yolo_names_variants_and_split_tree(client, root, tmp_path, names):
    gen = make_detection_yolo(root / "y", n=8, names=names, split=True)
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, zip_dir(gen.root, tmp_path / "y.zip"))
    images = check_imported(client, pid, gen, job)
    assert {im["subset_hint"] for im in images} == {"train", "val"}
    assert ("classes.txt" if names == "classes.txt" else "data.yaml") in job["detected"]


def test_zip_without_a_top_folder(client, root, tmp_path):
    gen = make_detection_coco(root / "flat", n=4)
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, zip_dir(gen.root, tmp_path / "flat.zip", top=""))
    check_imported(client, pid, gen, job)


@pytest.mark.ray
@pytest.mark.parametrize("kind", list(MAKERS))
def test_every_format_through_serve(server, tmp_path, kind):
    for how in ("path", "zip"):
        run_format(server.http, server.import_root / tmp_path.name, tmp_path, kind, how)


def test_auto_detection_reports_the_layout(client, root):
    gen = make_detection_coco(root / "c", n=3)
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, gen.root, fmt="auto")
    assert job["format"] == "auto"
    # the report names the layout, the annotation file it read, its image count and classes
    detected = job["detected"]
    assert detected.startswith("Auto-detected") and "COCO" in detected
    assert "annotations/instances_default.json" in detected and "3 images" in detected
    assert "red" in detected and "blue" in detected


def test_auto_detection_failure_says_what_it_looked_for(client, root):
    (root / "empty" / "docs").mkdir(parents=True)
    (root / "empty" / "docs" / "readme.txt").write_text("no images here")
    pid = create_project(client, "classification")
    job = import_and_wait(client, pid, root / "empty")
    assert job["status"] == "failed"
    assert "no known dataset layout" in job["error"] and "looked for" in job["error"]


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_duplicates_are_skipped_and_counted(client, root):
    gen = make_classification_folder(root / "f", per_class=5)
    pid = create_project(client)
    first = import_and_wait(client, pid, gen.root)
    assert (first["added"], first["duplicates"]) == (10, 0)
    again = import_and_wait(client, pid, gen.root)
    assert again["status"] == "completed"
    assert (again["added"], again["duplicates"]) == (0, 10)
    # Adding to a project: new images added, known ones skipped.
    make_classification_folder(root / "f", classes=("green",), per_class=3, seed=9)
    more = import_and_wait(client, pid, gen.root)
    assert (more["added"], more["duplicates"]) == (3, 10)
    assert client.get(f"/api/datasets/{pid}").json()["data"]["image_count"] == 13


@pytest.mark.parametrize("task, kind, expected", [
    ("detection", "folder", "a classification dataset, but this is a detection project"),
    ("classification", "coco", "a detection dataset, but this is a classification project"),
    ("classification", "csv-boxes", "a detection dataset, but this is a classification project"),
])
def test_task_mismatch_fails_the_job_and_changes_nothing(client, settings, root, task, kind, expected):
    pid = create_project(client, task)
    seed = MAKERS["coco" if task == "detection" else "folder"](root / "seed")
    assert import_and_wait(client, pid, seed.root)["status"] == "completed"
    before = dataset_state(client, settings, pid)
    gen = MAKERS[kind](root / "wrong")
    job = import_and_wait(client, pid, gen.root)
    assert job["status"] == "failed" and expected in job["error"], job
    assert job["added"] == 0
    assert dataset_state(client, settings, pid) == before


def test_explicit_format_that_does_not_match_the_source(client, root):
    gen = make_classification_folder(root / "f", per_class=2)
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, gen.root, fmt="coco")
    assert job["status"] == "failed" and "no COCO annotation file" in job["error"]


# ----------------------------------------------------------------------------- bad requests


def test_local_path_outside_the_import_roots_is_403(client, settings, tmp_path):
    outside = make_classification_folder(tmp_path / "outside", per_class=1).root
    pid = create_project(client)
    msg = error_of(start_path_import(client, pid, outside), 403, "FORBIDDEN_PATH")
    assert str(outside) not in msg and "import roots" in msg  # issue #12 item 13: no path outside the roots
    # ../ out of the root is resolved first
    root = settings.allowed_import_roots[0]
    error_of(start_path_import(client, pid, f"{root}/../outside"), 403, "FORBIDDEN_PATH")
    # a symlink inside the root that points outside is followed before the check
    (root / "link").symlink_to(outside, target_is_directory=True)
    error_of(start_path_import(client, pid, root / "link"), 403, "FORBIDDEN_PATH")
    assert client.get(f"/api/datasets/{pid}").json()["data"]["last_import"] is None
    assert workspace_files(settings) == set()


def test_relative_path_is_422(client):
    pid = create_project(client)
    msg = error_of(start_path_import(client, pid, "imports/cats"), 422, "VALIDATION_ERROR")
    assert "source_path" in msg and "absolute" in msg


def test_missing_folder_inside_the_root_is_invalid_dataset(client, root):
    pid = create_project(client)
    msg = error_of(start_path_import(client, pid, root / "nope"), 400, "INVALID_DATASET")
    assert "nope" in msg


def test_unknown_format_is_422_naming_format(client, root, tmp_path):
    gen = make_classification_folder(root / "f", per_class=1)
    pid = create_project(client)
    assert "format" in error_of(start_path_import(client, pid, gen.root, fmt="pascal"), 422, "VALIDATION_ERROR")
    archive = zip_dir(gen.root, tmp_path / "f.zip")
    assert "format" in error_of(start_zip_import(client, pid, archive, fmt="pascal"), 422, "VALIDATION_ERROR")


def test_unknown_project_is_404(client, root, tmp_path):
    gen = make_classification_folder(root / "f", per_class=1)
    error_of(start_path_import(client, "proj-000000000000", gen.root), 404, "NOT_FOUND")
    error_of(start_zip_import(client, "proj-000000000000", zip_dir(gen.root, tmp_path / "f.zip")), 404, "NOT_FOUND")


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buf, format="JPEG")
    return buf.getvalue()


def _symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


BAD_ZIPS = {
    "not-a-zip": (lambda p: (p.write_bytes(b"PK but not really a zip file" * 10), p)[1], "not a ZIP archive"),
    "zip-slip": (lambda p: _zip(p, [("ds/red/a.jpg", _jpeg()), ("ds/../../evil.jpg", _jpeg())]), "../../evil.jpg"),
    "absolute": (lambda p: _zip(p, [("ds/red/a.jpg", _jpeg()), ("/etc/evil.jpg", _jpeg())]), "/etc/evil.jpg"),
    "symlink": (lambda p: _zip(p, [("ds/red/a.jpg", _jpeg()), _symlink_member("ds/red/b.jpg", "/etc/passwd")]), "ds/red/b.jpg"),
    "bomb": (lambda p: _zip(p, [("ds/red/a.jpg", _jpeg()), ("ds/red/zeros.jpg", b"\0" * (8 << 20))]), "ZIP bomb"),
    "truncated": (lambda p: (p.write_bytes(_zip(p, [("ds/red/a.jpg", _jpeg() * 50)]).read_bytes()[:300]), p)[1], "corrupt"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_zip_is_400_and_writes_nothing(client, settings, tmp_path, case):
    make, expected = BAD_ZIPS[case]
    archive = make(tmp_path / "bad.zip")
    pid = create_project(client)
    before = workspace_files(settings)
    msg = error_of(start_zip_import(client, pid, archive), 400, "INVALID_DATASET")
    assert expected in msg and "bad.zip" in msg, msg
    assert workspace_files(settings) == before
    assert staging_left(settings) == []
    assert not (tmp_path.parent / "evil.jpg").exists()
    assert client.get(f"/api/datasets/{pid}").json()["data"]["last_import"] is None


@pytest.fixture
def small_client(tmp_path):
    """An app whose uploads (and uncompressed ZIP contents) are limited to 20 kB."""
    (tmp_path / "imports").mkdir()
    settings = Settings(workspace=tmp_path / "ws", import_roots=[tmp_path / "imports"], api_token=None,
                        max_upload_bytes=20_000)
    with TestClient(create_app(settings)) as c:
        yield c, settings


def test_upload_over_the_limit_is_413(small_client, tmp_path):
    client, settings = small_client
    pid = create_project(client)
    # streamed past the limit (the declared length is within the slack, so the body is read)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ds/red/a.bin", os.urandom(60_000))
    msg = error_of(start_zip_import(client, pid, big), 413, "PAYLOAD_TOO_LARGE")
    assert "20000" in msg
    # declared far past the limit: refused before reading
    huge = tmp_path / "huge.zip"
    with zipfile.ZipFile(huge, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ds/red/a.bin", os.urandom(1_200_000))
    error_of(start_zip_import(client, pid, huge), 413, "PAYLOAD_TOO_LARGE")
    # small upload, but its uncompressed content is over the limit
    dense = tmp_path / "dense.zip"
    with zipfile.ZipFile(dense, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ds/red/a.txt", "".join(f"{i:08x}" for i in range(8_000)))  # 64 kB of text, compresses well
    assert dense.stat().st_size < 20_000
    assert "uncompressed" in error_of(start_zip_import(client, pid, dense), 413, "PAYLOAD_TOO_LARGE")
    assert staging_left(settings) == []
    assert workspace_files(settings) == set()


# ----------------------------------------------------------------------------- atomicity, cancel, warnings


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_a_failing_import_leaves_the_dataset_as_it_was(client, settings, root):
    pid = create_project(client)
    gen = make_classification_folder(root / "good", per_class=4)
    assert import_and_wait(client, pid, gen.root)["added"] == 8
    before = dataset_state(client, settings, pid)
    # nothing usable in the source
    for i in range(3):
        write_corrupt(root / "bad" / "red" / f"x{i}.jpg")
    job = import_and_wait(client, pid, root / "bad")
    assert job["status"] == "failed" and "no usable image" in job["error"] and "red/x0.jpg" in job["error"]
    assert dataset_state(client, settings, pid) == before
    assert staging_left(settings) == []


def test_a_failure_during_the_commit_removes_the_moved_files(client, settings, root, monkeypatch):
    pid = create_project(client)
    assert import_and_wait(client, pid, make_classification_folder(root / "a", per_class=3).root)["added"] == 6
    before = dataset_state(client, settings, pid)

    monkeypatch.setattr(service, "WORKER_ENTRY", hook("broken_insert"))  # the import runs in its worker process
    job = import_and_wait(client, pid, make_classification_folder(root / "b", per_class=5, seed=7).root)
    assert job["status"] == "failed" and "disk full (simulated)" in job["error"]
    assert dataset_state(client, settings, pid) == before
    assert staging_left(settings) == []


def test_cancel_a_queued_import(client, settings, root, tmp_path, monkeypatch):
    gate = threading.Event()
    real = service.run_import

    def gated(settings_, import_id):
        gate.wait(10)
        real(settings_, import_id)

    monkeypatch.setattr(service, "run_import", gated)
    pid = create_project(client)
    archive = zip_dir(make_classification_folder(root / "f", per_class=3).root, tmp_path / "f.zip")
    r = start_zip_import(client, pid, archive)
    assert r.status_code == 202 and r.json()["data"]["status"] == "queued"
    job_id = r.json()["data"]["id"]
    assert staging_left(settings) == [job_id]  # the upload waits in staging
    r = client.delete(f"/api/datasets/{pid}/imports/{job_id}")
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelled"
    assert "unchanged" in r.json()["data"]["error"]
    gate.set()
    wait_until(lambda: staging_left(settings) == [], what="the staged upload to be removed")
    job = wait_import(client, pid, job_id)
    assert job["status"] == "cancelled" and job["added"] == 0
    assert dataset_state(client, settings, pid) == (0, set())
    # a finished import cannot be cancelled
    assert "cancelled" in error_of(client.delete(f"/api/datasets/{pid}/imports/{job_id}"), 409, "CONFLICT")


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_cancel_a_running_import(client, settings, root, monkeypatch):
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("held"))  # parsing waits for <root>.release
    pid = create_project(client)
    source = make_classification_folder(root / "f", per_class=3).root
    r = start_path_import(client, pid, source)
    job_id = r.json()["data"]["id"]
    wait_until(started(source).exists, timeout=60, what="the worker to start parsing")
    assert client.get(f"/api/datasets/{pid}/imports/{job_id}").json()["data"]["status"] == "running"
    r = client.delete(f"/api/datasets/{pid}/imports/{job_id}")
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelling"
    release(source).touch()
    job = wait_import(client, pid, job_id)
    assert job["status"] == "cancelled" and "unchanged" in job["error"]
    assert dataset_state(client, settings, pid) == (0, set())
    assert staging_left(settings) == []


def test_corrupt_images_are_warnings_per_file(client, root):
    gen = make_classification_folder(root / "f", per_class=3)
    write_corrupt(gen.root / "red" / "zz_broken.jpg")
    (gen.root / "blue" / "empty.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(gen.root / "stray.jpg")  # not in a class folder
    pid = create_project(client)
    job = import_and_wait(client, pid, gen.root)
    assert job["status"] == "completed" and job["added"] == 6 and job["skipped"] == 3
    reasons = {w["file"]: w["reason"] for w in job["warnings"]}
    assert set(reasons) == {"red/zz_broken.jpg", "blue/empty.png", "stray.jpg"}
    assert "unreadable image" in reasons["red/zz_broken.jpg"] and "skipped" in reasons["red/zz_broken.jpg"]
    assert "not inside a class folder" in reasons["stray.jpg"]
    assert client.get(f"/api/datasets/{pid}").json()["data"]["last_import"]["warnings"] == job["warnings"]


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_bad_boxes_are_warnings_naming_the_annotation(client, root):
    gen = make_detection_yolo(root / "y", n=4)
    (gen.root / "labels" / "img_000.txt").write_text("0 0.5 0.5 0 0.2\n7 0.5 0.5 0.2 0.2\n")  # zero-area, unknown id
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, gen.root)
    assert job["status"] == "completed" and job["added"] == 3
    texts = [f"{w['file']}: {w['reason']}" for w in job["warnings"]]
    assert any("labels/img_000.txt" in t and "line 1" in t and "zero-area" in t for t in texts), texts
    assert any("labels/img_000.txt: line 2: unknown class id 7" in t for t in texts), texts
    assert any("images/img_000.jpg" in t and "no valid box left" in t for t in texts), texts


def test_import_job_unknown_ids_are_404(client, root):
    pid = create_project(client)
    for bad in ("imp-000000000000", "imp-zz", "%2e%2e", "proj-000000000000"):
        error_of(client.get(f"/api/datasets/{pid}/imports/{bad}"), 404, "NOT_FOUND")
        error_of(client.delete(f"/api/datasets/{pid}/imports/{bad}"), 404, "NOT_FOUND")
    # an import of another project
    other = create_project(client, name="other")
    job = import_and_wait(client, other, make_classification_folder(root / "f", per_class=1).root)
    error_of(client.get(f"/api/datasets/{pid}/imports/{job['id']}"), 404, "NOT_FOUND")


# ----------------------------------------------------------------------------- summary


def test_summary_classification_with_imbalance(client, root):
    make_classification_folder(root / "f", classes=("red",), per_class=20)
    make_classification_folder(root / "f", classes=("blue",), per_class=2, seed=5)
    pid = create_project(client)
    job = import_and_wait(client, pid, root / "f")
    s = client.get(f"/api/datasets/{pid}").json()["data"]
    assert s["task"] == "classification" and s["image_count"] == 22
    assert s["classes"] == [{"name": "blue", "images": 2, "boxes": 0}, {"name": "red", "images": 20, "boxes": 0}]
    assert s["box_count"] == 0 and s["boxes_per_image"] is None
    assert s["width"] == {"min": 32, "max": 32, "mean": 32, "median": 32} == s["height"]
    assert s["aspect_ratio"]["min"] == s["aspect_ratio"]["max"] == 1
    assert s["images_without_labels"] == 0
    assert len(s["warnings"]) == 1 and "imbalance" in s["warnings"][0] and "10x" in s["warnings"][0]
    assert s["last_import"]["id"] == job["id"]


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_summary_detection(client, root):
    gen = make_detection_coco(root / "c", n=8, size=96, background=2)
    pid = create_project(client, "detection")
    import_and_wait(client, pid, gen.root)
    Image.new("RGB", (64, 32), (1, 2, 3)).save(root / "c" / "images" / "wide.jpg")  # not annotated: ignored
    s = client.get(f"/api/datasets/{pid}").json()["data"]
    assert s["image_count"] == 10 and s["box_count"] == 8
    assert s["boxes_per_class"] == {"blue": 4, "red": 4}
    assert s["classes"] == [{"name": "blue", "images": 4, "boxes": 4}, {"name": "red", "images": 4, "boxes": 4}]
    assert s["boxes_per_image"] == {"min": 0, "max": 1, "mean": 0.8, "median": 1.0}
    assert s["images_without_labels"] == 2
    assert s["warnings"] == []


def test_summary_of_an_empty_project(client):
    pid = create_project(client)
    s = client.get(f"/api/datasets/{pid}").json()["data"]
    assert s["image_count"] == 0 and s["classes"] == [] and s["width"] is None and s["last_import"] is None
    error_of(client.get("/api/datasets/proj-000000000000"), 404, "NOT_FOUND")


# ----------------------------------------------------------------------------- browsing


@pytest.fixture
def cls_project(client, root):
    gen = make_classification_folder(root / "f", per_class=12)
    pid = create_project(client)
    assert import_and_wait(client, pid, gen.root)["added"] == 24
    return pid


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_images_paging(client, cls_project):
    pid = cls_project
    seen = []
    for offset in (0, 10, 20):
        page = client.get(f"/api/datasets/{pid}/images", params={"offset": offset, "limit": 10}).json()["data"]
        assert page["total"] == 24 and page["offset"] == offset and page["limit"] == 10
        assert len(page["items"]) == (4 if offset == 20 else 10)
        seen += [im["id"] for im in page["items"]]
    assert len(set(seen)) == 24
    assert client.get(f"/api/datasets/{pid}/images?offset=100").json()["data"]["items"] == []
    assert "limit" in error_of(client.get(f"/api/datasets/{pid}/images?limit=501"), 422, "VALIDATION_ERROR")
    assert "offset" in error_of(client.get(f"/api/datasets/{pid}/images?offset=-1"), 422, "VALIDATION_ERROR")


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_images_label_filter(client, cls_project, root):
    red = list_all_images(client, cls_project, label="red")
    assert len(red) == 12 and {im["label"] for im in red} == {"red"}
    assert list_all_images(client, cls_project, label="purple") == []
    # detection: by box label
    gen = make_detection_coco(root / "c", n=6, classes=("red", "blue", "green"))
    pid = create_project(client, "detection")
    import_and_wait(client, pid, gen.root)
    green = list_all_images(client, pid, label="green")
    assert len(green) == 2 and all(any(b["label"] == "green" for b in im["boxes"]) for im in green)


def test_images_split_filter(client, cls_project):
    pid = cls_project
    split = client.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.25, "test": 0.25, "seed": 3}).json()["data"]
    subsets = {sub: list_all_images(client, pid, split_id=split["id"], subset=sub) for sub in ("train", "val", "test")}
    assert {k: len(v) for k, v in subsets.items()} == split["counts"]["total"] == {"train": 12, "val": 6, "test": 6}
    ids = [im["id"] for v in subsets.values() for im in v]
    assert len(set(ids)) == 24
    assert len(list_all_images(client, pid, split_id=split["id"])) == 24
    red_val = list_all_images(client, pid, split_id=split["id"], subset="val", label="red")
    assert len(red_val) == 3 and {im["label"] for im in red_val} == {"red"}
    assert "split_id" in error_of(client.get(f"/api/datasets/{pid}/images?subset=val"), 422, "VALIDATION_ERROR")
    assert "subset" in error_of(client.get(f"/api/datasets/{pid}/images?split_id={split['id']}&subset=x"), 422, "VALIDATION_ERROR")
    error_of(client.get(f"/api/datasets/{pid}/images?split_id=split-000000000000"), 404, "NOT_FOUND")
    error_of(client.get(f"/api/datasets/{pid}/images?split_id=../x"), 404, "NOT_FOUND")


def test_image_detail(client, root):
    gen = make_detection_coco(root / "c", n=2)
    pid = create_project(client, "detection")
    import_and_wait(client, pid, gen.root)
    listed = list_all_images(client, pid)[0]
    detail = client.get(f"/api/datasets/{pid}/images/{listed['id']}").json()["data"]
    assert detail == listed
    want = gen.by_name()[detail["original_name"]].boxes[0]
    assert detail["boxes"] == [{"label": want.label, "x1": want.x1, "y1": want.y1, "x2": want.x2, "y2": want.y2,
                               "difficult": False}]  # only VOC marks boxes difficult (issue #13 item 5)
    assert detail["url"] == f"/api/datasets/{pid}/image/{detail['filename']}"
    assert detail["thumbnail_url"] == f"/api/datasets/{pid}/thumbnail/{detail['filename']}?v={detail['sha256'][:16]}"
    assert len(detail["sha256"]) == 64 and detail["size_bytes"] > 0


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_delete_image(client, settings, cls_project):
    pid = cls_project
    split = client.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.5, "test": 0}).json()["data"]
    im = list_all_images(client, pid)[0]
    assert client.get(im["thumbnail_url"]).status_code == 200
    dataset = settings.workspace / "projects" / pid / "dataset"
    thumb = dataset / ".thumbs" / (Path(im["filename"]).stem + ".jpg")
    assert (dataset / "images" / im["filename"]).is_file() and thumb.is_file()
    r = client.delete(f"/api/datasets/{pid}/images/{im['id']}")
    assert r.json() == {"status": "ok", "data": {"id": im["id"], "deleted": True}}
    assert not (dataset / "images" / im["filename"]).exists() and not thumb.exists()
    error_of(client.get(f"/api/datasets/{pid}/images/{im['id']}"), 404, "NOT_FOUND")
    error_of(client.get(im["url"]), 404, "NOT_FOUND")
    error_of(client.get(im["thumbnail_url"]), 404, "NOT_FOUND")
    assert client.get(f"/api/datasets/{pid}").json()["data"]["image_count"] == 23
    assert im["id"] not in {i["id"] for i in list_all_images(client, pid, split_id=split["id"])}
    error_of(client.delete(f"/api/datasets/{pid}/images/{im['id']}"), 404, "NOT_FOUND")


def test_image_file_and_thumbnail_cached_once(client, settings, root, monkeypatch):
    (root / "big" / "green").mkdir(parents=True)
    Image.new("RGB", (640, 320), (10, 200, 30)).save(root / "big" / "green" / "a.png")
    pid = create_project(client)
    import_and_wait(client, pid, root / "big")
    im = list_all_images(client, pid)[0]
    r = client.get(im["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (root / "big" / "green" / "a.png").read_bytes()
    assert "immutable" in r.headers["cache-control"]

    # Made at import: a request only reads it (tests/hostile/test_image_bombs.py covers the lazy path).
    thumb = settings.workspace / "projects" / pid / "dataset" / ".thumbs" / (Path(im["filename"]).stem + ".jpg")
    assert thumb.is_file()
    from appliance.services import thumbnails

    calls = []
    real = thumbnails.make_thumbnail
    monkeypatch.setattr(thumbnails, "make_thumbnail", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    first = client.get(im["thumbnail_url"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert "immutable" in first.headers["cache-control"] and "max-age=31536000" in first.headers["cache-control"]
    assert first.headers.get("etag")
    assert Image.open(thumb).size == (256, 128)
    mtime = thumb.stat().st_mtime_ns
    second = client.get(im["thumbnail_url"])
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert thumb.stat().st_mtime_ns == mtime and calls == []


@pytest.mark.parametrize("kind", ["image", "thumbnail"])
def test_traversal_attempts_are_404(client, settings, root, tmp_path, kind):
    pid = create_project(client)
    import_and_wait(client, pid, make_classification_folder(root / "a", per_class=2).root)
    other = create_project(client, name="other")
    import_and_wait(client, other, make_classification_folder(root / "b", per_class=2, seed=8).root)
    mine = list_all_images(client, pid)
    theirs = list_all_images(client, other)[0]["filename"]
    base = f"/api/datasets/{pid}/{kind}/"
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(secret)
    hostile = [
        "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2faistudio.db", "%2e%2e",
        "%2Fetc%2Fpasswd", "//etc/passwd", f"..%2F{other}%2Fdataset%2Fimages%2F{theirs}",
        theirs,  # a real file name, of another project
        "aistudio.db", ".thumbs", "img-000000000000.jpg",
    ]
    for name in hostile:
        r = client.get(base + name)
        assert r.status_code == 404, (name, r.status_code, r.text[:200])
        assert r.json()["status"] == "error"
    images = settings.workspace / "projects" / pid / "dataset" / "images"
    # a symlink planted in the images folder: unknown name, or replacing a real image
    (images / "img-aaaaaaaaaaaa.jpg").symlink_to(secret)
    assert client.get(base + "img-aaaaaaaaaaaa.jpg").status_code == 404
    victim = mine[0]["filename"]
    (images / victim).unlink()
    (images / victim).symlink_to(secret)
    assert client.get(base + victim).status_code == 404
    # a planted thumbnail symlink is not served either
    thumbs = settings.workspace / "projects" / pid / "dataset" / ".thumbs"
    thumbs.mkdir(exist_ok=True)
    intact = mine[1]["filename"]
    (thumbs / (Path(intact).stem + ".jpg")).unlink(missing_ok=True)  # made at import
    (thumbs / (Path(intact).stem + ".jpg")).symlink_to(secret)
    r = client.get(f"/api/datasets/{pid}/thumbnail/{intact}")
    assert r.status_code == 404
    assert client.get(f"/api/datasets/{pid}/image/{intact}").status_code == 200


def test_unknown_ids_are_404(client, cls_project):
    pid = cls_project
    im = list_all_images(client, pid)[0]
    for url in (
        "/api/datasets/proj-000000000000", "/api/datasets/proj-000000000000/images",
        f"/api/datasets/proj-000000000000/images/{im['id']}", f"/api/datasets/proj-000000000000/image/{im['filename']}",
        f"/api/datasets/proj-000000000000/thumbnail/{im['filename']}", "/api/datasets/nope/images",
        f"/api/datasets/{pid}/images/img-000000000000", f"/api/datasets/{pid}/images/img-x", f"/api/datasets/{pid}/images/%2e%2e",
    ):
        error_of(client.get(url), 404, "NOT_FOUND")
    error_of(client.delete(f"/api/datasets/{pid}/images/img-000000000000"), 404, "NOT_FOUND")
    other = create_project(client, name="other")
    error_of(client.get(f"/api/datasets/{other}/images/{im['id']}"), 404, "NOT_FOUND")
    error_of(client.delete(f"/api/datasets/{other}/images/{im['id']}"), 404, "NOT_FOUND")


# ----------------------------------------------------------------------------- HTMX fragments


def test_fragments_for_htmx(client, cls_project):
    pid = cls_project
    hx = {"HX-Request": "true"}
    job = client.get(f"/api/datasets/{pid}").json()["data"]["last_import"]
    r = client.get(f"/api/datasets/{pid}/imports/{job['id']}", headers=hx)
    box = parse(r.text).select_one("#import-job")
    assert r.status_code == 200 and not parse(r.text).select("html")
    assert (box.attrs["data-status"], box.attrs["data-import-id"]) == ("completed", job["id"])
    assert "hx-trigger" not in box.attrs and not parse(r.text).select("#cancel-import")  # finished: no polling
    assert box.select_one(".added").text == str(job["added"]) == "24"

    summary = parse(client.get(f"/api/datasets/{pid}", headers=hx).text)
    assert summary.select_one("#summary-images").text == "24"
    chart = json.loads(summary.select_one("canvas#class-chart").attrs["data-chart"])["data"]
    counts = dict(zip(chart["labels"], chart["datasets"][0]["data"]))
    assert counts == {"red": 12, "blue": 12}  # the class histogram: images per generated class

    # the grid page: exactly the API's page for the same filter, and paging links that keep it
    want = client.get(f"/api/datasets/{pid}/images?limit=10&offset=10&label=red").json()["data"]["items"]
    grid = parse(client.get(f"/api/datasets/{pid}/images?limit=10&offset=10&label=red", headers=hx).text)
    assert [t.attrs["data-image-id"] for t in grid.select(".thumb")] == [im["id"] for im in want]
    assert len(want) == 2
    prev, nxt = grid.select_one("#grid-prev"), grid.select_one("#grid-next")
    url = urlsplit(prev.attrs["hx-get"])
    assert url.path == f"/api/datasets/{pid}/images"
    assert parse_qs(url.query) == {"offset": ["0"], "limit": ["10"], "label": ["red"]}
    assert "disabled" not in prev.attrs and "disabled" in nxt.attrs  # 12 red images: no page after 10-12

    page = parse(client.get(f"/projects/{pid}/dataset").text)
    assert page.select_one("form#import-upload-form input[type=file]")
    assert {t.attrs["data-image-id"] for t in page.select("#image-grid .thumb")} == {
        im["id"] for im in list_all_images(client, pid)}
    # every script and stylesheet comes from this server (the appliance works offline)
    assets = [el.attrs["src"] for el in page.select("script[src]")] + [el.attrs["href"] for el in page.select("link[href]")]
    assert assets and all(a.startswith("/static/") for a in assets), assets
    assert any("chart" in a for a in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_running_import_fragment_polls(client, root, monkeypatch):
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("held"))  # parsing waits for <root>.release
    pid = create_project(client)
    source = make_classification_folder(root / "f", per_class=1).root
    r = start_path_import(client, pid, source)
    job_id = r.json()["data"]["id"]
    try:
        wait_until(started(source).exists, timeout=60, what="the worker to start parsing")
        frag = parse(client.get(f"/api/datasets/{pid}/imports/{job_id}", headers={"HX-Request": "true"}).text)
    finally:
        release(source).touch()
    box = frag.select_one("#import-job")
    assert box.attrs["data-status"] == "running"
    assert box.attrs["hx-get"] == f"/api/datasets/{pid}/imports/{job_id}" and "every" in box.attrs["hx-trigger"]
    assert frag.select_one("#cancel-import").attrs["hx-delete"] == f"/api/datasets/{pid}/imports/{job_id}"
    assert wait_import(client, pid, job_id)["status"] == "completed"


def raw_get(url: str, path: str, token: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side dot-segment normalization)."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.ray
def test_traversal_and_bad_zip_through_serve(server, tmp_path):
    http = server.http
    pid = create_project(http, name="serve traversal")
    gen = make_classification_folder(server.import_root / tmp_path.name / "f", per_class=2)
    assert import_and_wait(http, pid, gen.root)["added"] == 4
    name = list_all_images(http, pid)[0]["filename"]
    assert http.get(f"/api/datasets/{pid}/thumbnail/{name}").status_code == 200
    for kind in ("image", "thumbnail"):
        for path in ("../../../../etc/passwd", "..%2F..%2F..%2Faistudio.db", "%2e%2e%2f%2e%2e%2fimages%2f" + name,
                     "%2Fetc%2Fpasswd", "..", f"../images/{name}"):
            status, body = raw_get(server.url, f"/api/datasets/{pid}/{kind}/{path}", server.token)
            assert status == 404, (kind, path, status, body[:200])
    archive = tmp_path / "slip.zip"
    _zip(archive, [("ds/red/a.jpg", _jpeg()), ("ds/../../evil.jpg", _jpeg())])
    msg = error_of(start_zip_import(http, pid, archive), 400, "INVALID_DATASET")
    assert "slip.zip" in msg and "../../evil.jpg" in msg
    staging = server.settings.workspace / "staging"
    assert not any(staging.iterdir())
