"""Issue #13 items 4 and 5 through the API: the `yaml_file` import option (Ultralytics
`<name>.yaml`; several YAMLs refused naming them), the `voc` format, the source subset stored
per image, and the `import_jobs.yaml_file` migration. Layouts are built by the importer tests'
builders; one import per new format runs through the real Serve ingress (`server`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from appliance.store.db import head_revision, migrate
from appliance.store.legacy_migrations import MIGRATIONS, _add_import_yaml_file, upgrade as legacy_upgrade
from tests.fixtures import create_project, list_all_images, start_zip_import, wait_import, zip_dir
from tests.services.test_import_formats_13 import ultralytics_coco8, voc_set, write, yolo_pair


@pytest.fixture
def root(settings) -> Path:
    return settings.allowed_import_roots[0]


def local(http, pid: str, path: Path, fmt: str = "auto", **extra):
    body = {"project_id": pid, "source_path": str(path), "format": fmt, **extra}
    # json.dumps escapes a lone surrogate as `\ud800`, as a browser's JSON.stringify does
    return http.post("/api/datasets/import/local", content=json.dumps(body),
                     headers={"content-type": "application/json"})


def two_yamls(folder: Path) -> Path:
    yolo_pair(folder, "images/train/a.jpg", "labels/train/a.txt", "1 0.5 0.5 0.5 0.5\n")
    yolo_pair(folder, "images/val/b.jpg", "labels/val/b.txt", "0 0.5 0.5 0.5 0.5\n")
    write(folder / "coco8.yaml", "path: .\ntrain: images/train\nval: images/val\nnames: {0: person, 1: car}\n")
    write(folder / "other.yaml", "names: [cat, dog]\n")
    return folder


def subsets_and_boxes(http, pid: str) -> dict[str, tuple[str | None, list]]:
    return {i["original_name"]: (i["subset_hint"], sorted((b["label"], b["x1"], b["x2"]) for b in i["boxes"]))
            for i in list_all_images(http, pid)}


def test_several_yamls_local_import_is_refused_at_once_naming_them(client, root, settings):
    folder = two_yamls(root / "ds")
    pid = create_project(client, "detection")
    r = local(client, pid, folder)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"code": "INVALID_DATASET", "message": (
        "yaml_file: several YAML files at the dataset root have class names (coco8.yaml, other.yaml); "
        "choose one with the yaml_file option (Class-list YAML on the import form)")}
    assert client.get(f"/api/datasets/{pid}").json()["data"]["image_count"] == 0
    r = local(client, pid, folder, "yolo", yaml_file="missing.yaml")
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "yaml_file: no missing.yaml at the dataset root (YAML files with class names there: coco8.yaml, other.yaml)")
    r = local(client, pid, folder, "auto", yaml_file="coco8.yaml")
    assert r.status_code == 202, r.text
    assert r.json()["data"]["yaml_file"] == "coco8.yaml"
    job = wait_import(client, pid, r.json()["data"]["id"])
    assert job["status"] == "completed" and job["yaml_file"] == "coco8.yaml", job
    assert "coco8.yaml with 2 classes" in job["detected"]
    assert subsets_and_boxes(client, pid) == {
        "images/train/a.jpg": ("train", [("car", 10.0, 30.0)]), "images/val/b.jpg": ("val", [("person", 10.0, 30.0)])}


def test_several_yamls_upload_fails_the_job_naming_them_then_works_when_named(client, tmp_path):
    archive = zip_dir(two_yamls(tmp_path / "coco8"), tmp_path / "coco8.zip")
    pid = create_project(client, "detection")
    r = start_zip_import(client, pid, archive)
    assert r.status_code == 202, r.text
    job = wait_import(client, pid, r.json()["data"]["id"])
    assert job["status"] == "failed" and job["error"] == (
        "yaml_file: several YAML files at the dataset root have class names (coco8.yaml, other.yaml); "
        "choose one with the yaml_file option (Class-list YAML on the import form)")
    assert client.get(f"/api/datasets/{pid}").json()["data"]["image_count"] == 0  # nothing half-written
    with open(archive, "rb") as f:
        r = client.post("/api/datasets/import/upload", data={"project_id": pid, "yaml_file": "other.yaml"},
                        files={"file": ("coco8.zip", f, "application/zip")})
    assert r.status_code == 202, r.text
    job = wait_import(client, pid, r.json()["data"]["id"])
    assert job["status"] == "completed" and job["yaml_file"] == "other.yaml", job
    assert {name: boxes[0][0] for name, (_, boxes) in subsets_and_boxes(client, pid).items()} == {
        "images/train/a.jpg": "dog", "images/val/b.jpg": "cat"}


@pytest.mark.parametrize("bad", ["../coco8.yaml", "sub/x.yaml", "x\\y.yaml", ".hidden.yaml", "names.txt", "a.yaml/",
                                 "a.yaml\x00", "a\nb.yaml", "\ud800.yaml", "x" * 300 + ".yaml", 7, ["a.yaml"]])
def test_bad_yaml_file_values_are_refused_naming_the_field(client, root, bad):
    folder = two_yamls(root / "ds")
    pid = create_project(client, "detection")
    r = local(client, pid, folder, "yolo", yaml_file=bad)
    assert r.status_code == 422, r.text
    assert "yaml_file" in r.json()["error"]["message"]


def test_bad_yaml_file_in_an_upload_is_refused_and_leaves_no_stage(client, settings, tmp_path):
    archive = zip_dir(two_yamls(tmp_path / "coco8"), tmp_path / "coco8.zip")
    pid = create_project(client, "detection")
    with open(archive, "rb") as f:
        r = client.post("/api/datasets/import/upload", data={"project_id": pid, "yaml_file": "../x.yaml"},
                        files={"file": ("coco8.zip", f, "application/zip")})
    assert r.status_code == 422 and "yaml_file" in r.json()["error"]["message"], r.text
    staging = settings.workspace / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_voc_format_by_name_and_unknown_format_refused(client, root):
    voc_set(root / "voc")
    pid = create_project(client, "detection")
    r = local(client, pid, root / "voc", "voc")
    assert r.status_code == 202, r.text
    job = wait_import(client, pid, r.json()["data"]["id"])
    assert job["status"] == "completed" and job["added"] == 4, job
    assert {"file": "Annotations/000004.xml",
            "reason": "malformed XML (no element found, line 1 column 67); its image is skipped"} in job["warnings"]
    r = local(client, pid, root / "voc", "pascal")
    assert r.status_code == 422 and "format" in r.json()["error"]["message"]


def test_migration_adds_yaml_file_to_an_older_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:  # the database as a release before the column left it
        legacy_upgrade(conn)
        conn.execute(text("ALTER TABLE import_jobs DROP COLUMN yaml_file"))
        conn.execute(text("DELETE FROM schema_version WHERE version >= :v"),
                     {"v": MIGRATIONS.index(_add_import_yaml_file) + 1})
        conn.execute(text("INSERT INTO projects (id, name, task, description, created_at, updated_at) "
                          "VALUES ('p', 'p', 'detection', '', '2026-01-01', '2026-01-01')"))
        conn.execute(text("INSERT INTO import_jobs (id, project_id, status, format, source, detected, done, total, "
                          "added, skipped, duplicates, warnings, created_at) VALUES ('i', 'p', 'completed', 'yolo', "
                          "'/x', '', 0, 0, 0, 0, 0, '[]', '2026-01-01')"))
    engine.dispose()
    assert migrate(create_engine(url)) == head_revision()
    with sqlite3.connect(tmp_path / "old.db") as db:
        assert db.execute("select id, yaml_file from import_jobs").fetchall() == [("i", None)]
        assert db.execute("select version_num from alembic_version").fetchall() == [(head_revision(),)]


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["ultralytics", "voc"])
def test_new_formats_through_serve(server, tmp_path, kind):
    """One import per new format through the real ingress: an Ultralytics folder by server path,
    a VOC ZIP by upload; every image keeps its source subset."""
    pid = create_project(server.http, "detection", name=f"{kind} #13")
    if kind == "ultralytics":
        folder = server.import_root / f"{tmp_path.name}-coco8"
        ultralytics_coco8(folder)
        r = local(server.http, pid, folder)
    else:
        voc_set(tmp_path / "VOC2007")
        r = start_zip_import(server.http, pid, zip_dir(tmp_path / "VOC2007", tmp_path / "voc.zip"))
    assert r.status_code == 202, r.text
    job = wait_import(server.http, pid, r.json()["data"]["id"], timeout=120)
    assert job["status"] == "completed", job
    got = subsets_and_boxes(server.http, pid)
    if kind == "ultralytics":
        assert job["detected"].startswith("Auto-detected YOLO layout: coco8.yaml with 3 classes")
        assert got == {"images/train/a.jpg": ("train", [("car", 8.0, 12.0), ("person", 10.0, 30.0)]),
                       "images/train/b.jpg": ("train", [("bicycle", 16.0, 24.0)]),
                       "images/val/c.jpg": ("val", [("car", 16.0, 24.0)])}
    else:
        assert job["detected"].startswith("Auto-detected Pascal VOC: 5 XML files")
        assert got == {"JPEGImages/000001.jpg": ("train", [("dog", 2.0, 12.0), ("person", 20.0, 30.0)]),
                       "JPEGImages/000002.jpg": ("train", [("cat", 1.0, 10.0)]),
                       "JPEGImages/000003.jpg": ("val", [("dog", 30.0, 40.0)]),
                       "JPEGImages/000005.jpg": ("test", [])}
        assert {"file": "JPEGImages/000003.jpg",
                "reason": "box clipped to the image (Annotations/000003.xml object 1)"} in job["warnings"]
