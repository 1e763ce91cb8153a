"""Edges of the classification metrics: what the input errors name, the label range exactly at its
bounds, top-5 from six classes, and JSON-ready integer counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_jobs.core.metrics import classification_metrics, detection_metrics

NAMES = ["a", "b", "c"]


def test_input_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"probs must have shape \(N, 3\), got \(2, 2\)"):
        classification_metrics([0, 1], np.zeros((2, 2)), NAMES)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, 3\), got \(3,\)"):
        classification_metrics([0, 1, 2], np.zeros(3), NAMES)
    with pytest.raises(ValueError, match="^2 labels but 4 rows of probabilities$"):
        classification_metrics([0, 1], np.zeros((4, 3)), NAMES)
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 2\]$"):
        classification_metrics([0, 3], np.zeros((2, 3)), NAMES)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        classification_metrics([-1, 0], np.zeros((2, 3)), NAMES)
    assert classification_metrics([2, 0], np.eye(3)[[2, 0]], NAMES)["accuracy"] == 1.0


def test_top5_from_six_classes_and_not_from_five():
    six = [f"k{i}" for i in range(6)]
    probs = np.array([[0.6, 0.5, 0.4, 0.3, 0.2, 0.1]] * 2)
    assert classification_metrics([4, 5], probs, six)["top5"] == 0.5
    assert classification_metrics([4, 0], probs[:, :5], six[:5])["top5"] is None


def test_counts_are_integers_in_json():
    m = classification_metrics([0, 1, 1], np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.7, 0.3, 0]]), NAMES)
    assert json.dumps(m["confusion_matrix"]["matrix"]) == "[[1, 0, 0], [1, 1, 0], [0, 0, 0]]"
    assert json.dumps([r["support"] for r in m["per_class"]]) == "[1, 2, 0]"
    assert (m["num_samples"], m["num_classes"]) == (3, 3)


def test_empty_classification():
    m = classification_metrics([], np.zeros((0, 3)), NAMES)
    assert (m["accuracy"], m["top5"], m["num_samples"]) == (0.0, None, 0)
    assert m["macro"] == m["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m["confusion_matrix"]["matrix"] == [[0, 0, 0]] * 3


def test_detection_input_errors():
    with pytest.raises(ValueError, match="^2 ground-truth images but 1 prediction entries$"):
        detection_metrics([{}, {}], [{}], NAMES)
    with pytest.raises(ValueError, match="^1 boxes but 2 labels$"):
        detection_metrics([{"boxes": [[0, 0, 1, 1]], "labels": [0, 1]}], [{}], NAMES)
    with pytest.raises(ValueError, match="^1 boxes but 0 scores$"):
        detection_metrics([{}], [{"boxes": [[0, 0, 1, 1]], "labels": [0]}], NAMES)
    with pytest.raises(ValueError, match=r"^image 1: labels must be in \[0, 2\]$"):
        detection_metrics([{}, {"boxes": [[0, 0, 1, 1]], "labels": [3]}], [{}, {}], NAMES)
    with pytest.raises(ValueError, match=r"^image 0: labels must be in \[0, 2\]$"):
        detection_metrics([{}], [{"boxes": [[0, 0, 1, 1]], "labels": [-1], "scores": [0.5]}], NAMES)


def test_detection_metrics_print_nothing(capsys):
    gts = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
    preds = [{"boxes": [[0, 0, 10, 10]], "labels": [0], "scores": [0.9]}]
    assert detection_metrics(gts, preds, NAMES)["map50"] == pytest.approx(1.0)
    assert capsys.readouterr().out == ""  # pycocotools' progress lines stay out of the job logs


def test_detection_result_with_more_than_ten_detections_in_an_image():
    """12 objects found exactly, scores falling: COCO's maxDets=100 figures are all 1, the PR curve
    at IoU .5 has precision 1 everywhere and, at recall r, the score of the ceil(12 r)-th detection."""
    boxes = [[120 * i, 0, 120 * i + 100, 100] for i in range(12)]  # "large" objects (area > 96²)
    scores = [round(0.95 - 0.05 * i, 2) for i in range(12)]
    gts = [{"boxes": boxes, "labels": [0] * 12}]
    preds = [{"boxes": boxes, "labels": [0] * 12, "scores": scores}]
    m = detection_metrics(gts, preds, ["obj", "other"], iou_threshold=0.6, score_threshold=0.6)
    assert m["task"] == "detection" and (m["num_images"], m["num_classes"]) == (1, 2)
    for key in ("map", "map50", "map75", "mar100"):
        assert m[key] == pytest.approx(1.0), key
    obj, other = m["per_class"]
    assert (obj["index"], obj["name"], obj["num_gt"]) == (0, "obj", 12)
    assert (obj["ap"], obj["ap50"], obj["ap75"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (other["index"], other["name"], other["num_gt"], other["ap"], other["ap50"], other["ap75"]) == (
        1, "other", 0, None, None, None)
    curve = m["pr_curves"][0]
    grid = [i / 20 for i in range(21)]
    assert (curve["index"], curve["name"], curve["iou"]) == (0, "obj", 0.5)
    assert curve["recall"] == pytest.approx(grid)
    assert curve["precision"] == pytest.approx([1.0] * 21)
    expected_scores = [scores[max(0, -(-i * 12 // 20) - 1)] for i in range(21)]  # ceil(12 i / 20)-th
    assert curve["score"] == pytest.approx(expected_scores)
    assert m["pr_curves"][1] == {"index": 1, "name": "other", "iou": 0.5, "recall": pytest.approx(grid),
                                 "precision": [], "score": []}
    # the matrix uses the given thresholds: detections under .6 are not counted, so 4 objects are missed
    assert m["confusion_matrix"] == {
        "labels": ["obj", "other", "background"], "matrix": [[8, 0, 4], [0, 0, 0], [0, 0, 0]],
        "iou_threshold": 0.6, "score_threshold": 0.6,
    }
    assert json.dumps(m["confusion_matrix"]["matrix"]) == "[[8, 0, 4], [0, 0, 0], [0, 0, 0]]"


def test_thin_boxes_iou():
    from ray_jobs.core.metrics import box_iou

    a = [[0, 0, 0.5, 10], [0, 0, 10, 0.5]]
    assert box_iou(a, a).ravel().tolist() == pytest.approx([1.0, 0.25 / 9.75, 0.25 / 9.75, 1.0])


def test_matching_thresholds_are_inclusive_and_default_to_half():
    from ray_jobs.core.metrics import detection_confusion_matrix, match_detections

    gt = {"boxes": [[0, 0, 10, 10]], "labels": [0]}
    pred = {"boxes": [[0, 0, 10, 5]], "labels": [0], "scores": [0.25]}  # IoU exactly .5, score exactly .25
    assert match_detections(gt, pred)["pairs"] == [(0, 0)]
    assert match_detections(gt, pred, 0.51)["pairs"] == []
    assert match_detections(gt, pred, 0.5, 0.26)["kept_pred"] == []
    with pytest.raises(ValueError):
        detection_confusion_matrix([gt, gt], [pred], 1)
