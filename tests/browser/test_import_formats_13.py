"""Issue #13 items 4 and 5 on the Dataset page: a detection project offers Pascal VOC and the
"Class-list YAML" field; a folder with two class-list YAMLs is refused naming them, and imports
once one is named — in a real browser against the real Serve deployment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import screenshot
from tests.fixtures import create_project, list_all_images
from tests.services.test_import_formats_13 import write, yolo_pair

pytestmark = [pytest.mark.browser, pytest.mark.ray]
SHOTS = Path("/work/shots")


def shot(page, name: str) -> None:
    path = screenshot(page, name)
    if SHOTS.is_dir():  # the reviewers' folder, where it exists
        shutil.copy(path, SHOTS / f"{name}.png")


def test_yaml_choice_and_voc_on_the_import_form(page, server, tmp_path):
    pid = create_project(server.http, "detection", name="Browser coco8")
    folder = server.import_root / f"coco8-{tmp_path.name}"
    yolo_pair(folder, "images/train/a.jpg", "labels/train/a.txt", "1 0.5 0.5 0.5 0.5\n")
    yolo_pair(folder, "images/val/b.jpg", "labels/val/b.txt", "0 0.5 0.5 0.5 0.5\n")
    write(folder / "coco8.yaml", "path: ../datasets/coco8\ntrain: images/train\nval: images/val\n"
                                 "names:\n  0: person\n  1: car\n")
    write(folder / "coco8-seg.yaml", "names: [cat, dog]\n")

    page.goto(f"/projects/{pid}/dataset")
    options = page.locator("#import-path-form select[name=format] option").all_inner_texts()
    assert options == ["Auto-detect", "COCO JSON", "YOLO / Ultralytics (labels + YAML)", "Pascal VOC XML",
                       "CSV filename,xmin,ymin,xmax,ymax,label"]
    assert page.locator("#import-upload-form input[name=yaml_file]").count() == 1
    page.fill("#import-path-form input[name=source_path]", str(folder))
    page.click("#import-path-form button[type=submit]")
    error = page.locator("#import-error")
    error.filter(has_text="coco8-seg.yaml, coco8.yaml").wait_for()
    assert "choose one with the yaml_file option (Class-list YAML on the import form)" in error.inner_text()
    shot(page, "formats-yaml-ambiguous")

    page.fill("#import-path-form input[name=yaml_file]", "coco8.yaml")
    page.click("#import-path-form button[type=submit]")
    job = page.locator("#import-job[data-status=completed]")
    job.wait_for(timeout=60_000)
    assert "coco8.yaml with 2 classes" in job.locator(".detected").inner_text()
    page.locator("#summary-images", has_text="2").wait_for()
    assert error.inner_text().strip() == ""  # the refusal no longer shows
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "formats-yaml-imported")
    assert {i["original_name"]: i["subset_hint"] for i in list_all_images(server.http, pid)} == {
        "images/train/a.jpg": "train", "images/val/b.jpg": "val"}
