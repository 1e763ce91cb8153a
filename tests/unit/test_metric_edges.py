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
