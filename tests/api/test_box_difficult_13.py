"""Issue 13, item 5 — Pascal VOC's `difficult` flag is kept: stored as `boxes.difficult` (a migration),
returned on the API's box objects, and used as VOC uses it: evaluation neither rewards nor penalises a
difficult object (a prediction on it is not a false positive, missing it is not a miss, it is not in
`num_gt`). Import through the real API (in-process app; imports run in their real worker process);
the metric through the pure metric code and the evaluation task's `compute_results`."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from appliance.store.db import get_engine, head_revision, migrate, session_scope
from appliance.store.legacy_migrations import MIGRATIONS, _add_box_difficult, upgrade as legacy_upgrade
from appliance.store.paths import Workspace
from appliance.store.runs import subset_samples
from appliance.store.tables import Experiment
from ray_jobs.core.metrics import detection_confusion_matrix, detection_metrics, match_detections, rank_samples
from tests.pg import both_backends
from tests.fixtures import create_project, import_and_wait, list_all_images, save_image
from tests.htmlq import parse
from tests.workflows import create_experiment


def _xml(filename: str, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax, difficult-text or None)"""
    parts = [f"<annotation><filename>{filename}</filename><size><width>48</width><height>40</height>"
             "<depth>3</depth></size>"]
    for name, x1, y1, x2, y2, hard in objects:
        flag = f"<difficult>{hard}</difficult>" if hard is not None else ""
        parts.append(f"<object><name>{name}</name>{flag}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_voc_difficult_survives_import_and_comes_back_on_the_image_list(client, settings):
    src: Path = settings.allowed_import_roots[0] / "voc"
    (src / "Annotations").mkdir(parents=True)
    for n, colour in enumerate([(200, 30, 30), (30, 200, 30)], 1):
        save_image(Image.new("RGB", (48, 40), colour), src / "JPEGImages" / f"00000{n}.png")
    (src / "Annotations" / "000001.xml").write_text(_xml("000001.png", [
        ("dog", 2, 3, 12, 13, "0"), ("person", 20, 1, 30, 9, "1"), ("dog", 30, 20, 40, 30, None)]))
    (src / "Annotations" / "000002.xml").write_text(_xml("000002.png", [("person", 5, 5, 25, 25, "true")]))
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, src, "voc")
    assert job["status"] == "completed" and job["added"] == 2, job
    assert "2 boxes marked difficult (kept; evaluation ignores them)" in job["detected"], job["detected"]
    boxes = {im["original_name"]: [(b["label"], b["x1"], b["difficult"]) for b in im["boxes"]]
             for im in list_all_images(client, pid)}
    assert boxes == {
        "JPEGImages/000001.png": [("dog", 2.0, False), ("person", 20.0, True), ("dog", 30.0, False)],
        "JPEGImages/000002.png": [("person", 5.0, True)],
    }
    # the dataset grid marks them on the thumbnails' overlay (app.css draws `rect.difficult` dashed)
    grid = parse(client.get(f"/api/datasets/{pid}/images", headers={"HX-Request": "true"}).text)
    rects = grid.select(".thumb-boxes rect")
    assert sorted((r.attrs["data-label"], "difficult" in r.classes) for r in rects) == [
        ("dog", False), ("dog", False), ("person", True), ("person", True)]


def test_an_experiments_samples_carry_the_flag_to_evaluation(client, settings):
    """`subset_samples` (the truth evaluation, training and export read) gives each box's flag."""
    src: Path = settings.allowed_import_roots[0] / "voc-split"
    (src / "Annotations").mkdir(parents=True)
    (src / "ImageSets" / "Main").mkdir(parents=True)
    for n, (colour, subset) in enumerate([((200, 30, 30), "train"), ((30, 200, 30), "val"),
                                          ((30, 30, 200), "test")], 1):
        save_image(Image.new("RGB", (48, 40), colour), src / "JPEGImages" / f"00000{n}.png")
        (src / "Annotations" / f"00000{n}.xml").write_text(_xml(f"00000{n}.png", [
            ("dog", 2, 3, 12, 13, "0"), ("dog", 20, 1, 30, 9, "1")]))
        (src / "ImageSets" / "Main" / f"{subset}.txt").write_text(f"00000{n}\n")
    pid = create_project(client, "detection")
    assert import_and_wait(client, pid, src, "voc")["status"] == "completed"
    r = client.post(f"/api/splits/{pid}", json={"name": "as imported", "from_source": True})
    assert r.status_code == 201, r.text
    eid = create_experiment(client, pid, r.json()["data"]["id"], model="ssdlite320_mobilenet_v3_large",
                            image_size=64, batch_size=1)
    with session_scope(settings.db_url) as session:
        exp = session.get(Experiment, eid)
        [sample] = subset_samples(session, Workspace(settings.workspace), exp, "test")
    assert sample["labels"] == [0, 0] and sample["difficult"] == [False, True]


def test_migration_adds_the_difficult_column_to_an_older_database(tmp_path):
    """A database at the version before this change gets `boxes.difficult` (false) and keeps its boxes."""
    engine = get_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:  # the database as a release before the column left it
        legacy_upgrade(conn)
        conn.exec_driver_sql("ALTER TABLE boxes DROP COLUMN difficult")
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version >= ?",
                             (MIGRATIONS.index(_add_box_difficult) + 1,))
        conn.exec_driver_sql("INSERT INTO projects (id, name, task, description, created_at, updated_at) "
                             "VALUES ('proj-1', 'p', 'detection', '', '2026-01-01', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO images (id, project_id, filename, original_name, sha256, width, height, "
                             "size_bytes, created_at) VALUES ('img-1', 'proj-1', 'a.jpg', 'a.jpg', 'x', 4, 4, 1, '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO boxes (image_id, label, x1, y1, x2, y2) VALUES ('img-1', 'dog', 0, 0, 2, 2)")
    assert migrate(engine) == head_revision()
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT label, difficult FROM boxes").all() == [("dog", 0)]


# ----------------------------------------------------------------------------- the metric

DOG, CAT = 0, 1
NAMES = ["dog", "cat"]
# image 0: a found dog and a difficult dog that a prediction finds; image 1: a found cat and a
# difficult cat nothing finds
GTS = [
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [DOG, DOG], "difficult": [False, True]},
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [CAT, CAT], "difficult": [False, True]},
]
PREDS = [
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [DOG, DOG], "scores": [0.6, 0.9]},
    {"boxes": [[0, 0, 10, 10]], "labels": [CAT], "scores": [0.8]},
]


def _plain(gts):
    return [{k: v for k, v in g.items() if k != "difficult"} for g in gts]


def test_a_prediction_on_a_difficult_box_is_not_a_false_positive_and_a_missed_one_is_not_a_miss():
    m = match_detections(GTS[0], PREDS[0])
    assert m["pairs"] == [(0, 0)] and m["unmatched_pred"] == [] and m["ignored_pred"] == [1]
    m = match_detections(GTS[1], PREDS[1])
    assert m["pairs"] == [(0, 0)] and m["unmatched_gt"] == [] and m["difficult_gt"] == [1]

    metrics = detection_metrics(GTS, PREDS, NAMES)
    # the higher-scored dog prediction sits on the difficult dog: were it a false positive, AP < 1
    assert metrics["map50"] == pytest.approx(1.0) and metrics["map"] == pytest.approx(1.0)
    assert metrics["mar100"] == pytest.approx(1.0)  # the unfound difficult cat is no miss
    assert [(c["num_gt"], c["num_difficult"]) for c in metrics["per_class"]] == [(1, 1), (1, 1)]
    assert metrics["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]

    records = {r["index"]: r for r in rank_samples("detection", GTS, PREDS, NAMES)}
    assert [(r["num_gt"], r["missed"], r["false_positives"], r["is_error"]) for r in records.values()] == [
        (1, 0, 0, False), (1, 0, 0, False)]
    assert records[0]["gt"]["difficult"] == [False, True]

    # the same boxes without the flag: one false positive dog, one missed cat
    plain = detection_metrics(_plain(GTS), PREDS, NAMES)
    assert plain["map50"] < 1.0 and plain["mar100"] < 1.0
    assert [c["num_gt"] for c in plain["per_class"]] == [2, 2]
    assert detection_confusion_matrix(_plain(GTS), PREDS, 2).tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_difficult_is_no_excuse_for_a_box_of_another_class_or_a_small_one_inside_it():
    """Only a prediction of the difficult box's own class, matching it by the ordinary IoU, is ignored:
    not a cat on a difficult dog, nor a small dog inside a big difficult dog (COCO's crowd overlap
    would swallow it)."""
    gt = [{"boxes": [[0, 0, 40, 40]], "labels": [DOG], "difficult": [True]}]
    for pred in ({"boxes": [[0, 0, 40, 40]], "labels": [CAT], "scores": [0.9]},
                 {"boxes": [[0, 0, 8, 8]], "labels": [DOG], "scores": [0.9]}):
        assert match_detections(gt[0], pred)["unmatched_pred"] == [0]
        cm = detection_metrics(gt, [pred], NAMES)["confusion_matrix"]["matrix"]
        assert cm[2][pred["labels"][0]] == 1  # a false positive
    with pytest.raises(ValueError, match="1 boxes but 2 difficult flags"):
        detection_metrics([{**gt[0], "difficult": [True, False]}], [{"boxes": [], "labels": [], "scores": []}], NAMES)


def test_the_evaluation_task_passes_the_flag_to_the_metric():
    from ray_jobs.evaluate import compute_results

    samples = [{"boxes": g["boxes"], "labels": g["labels"], "difficult": g["difficult"]} for g in GTS]
    metrics, records = compute_results("detection", NAMES, samples, PREDS)
    assert metrics["map50"] == pytest.approx(1.0)
    assert not any(r["is_error"] for r in records)
