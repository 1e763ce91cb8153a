"""rank_samples (the error gallery's records), exactly: every field of every record, worked out by
hand, and the tie rules (stable by index) on inputs long enough for an unstable sort to differ."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_jobs.core.metrics import classification_metrics, match_detections, rank_samples

NAMES = ["a", "b", "c"]


def cls_record(index, true, pred, row, top, sample_id=None):
    return {
        "index": index, "id": index if sample_id is None else sample_id,
        "true": true, "true_name": NAMES[true], "pred": pred, "pred_name": NAMES[pred],
        "score": row[pred], "true_score": row[true], "correct": true == pred, "is_error": true != pred,
        "cell": [true, pred], "top": [{"index": i, "name": NAMES[i], "score": row[i]} for i in top],
    }


PROBS = [
    [0.9, 0.05, 0.05],  # 0: a, right, .9
    [0.1, 0.6, 0.3],    # 1: b, right, .6
    [0.4, 0.4, 0.2],    # 2: c, predicted a (tie a/b goes to a), .4
    [0.2, 0.5, 0.3],    # 3: a, predicted b, .5
    [0.2, 0.5, 0.3],    # 4: a, predicted b, .5 (same score as 3: index order)
]
Y = [0, 1, 2, 0, 0]


def test_classification_records_exact():
    recs = rank_samples("classification", Y, np.array(PROBS), NAMES, top_k=2)
    assert recs == [
        cls_record(3, 0, 1, PROBS[3], [1, 2]),
        cls_record(4, 0, 1, PROBS[4], [1, 2]),
        cls_record(2, 2, 0, PROBS[2], [0, 1]),
        cls_record(1, 1, 1, PROBS[1], [1, 2]),
        cls_record(0, 0, 0, PROBS[0], [0, 1]),
    ]
    json.dumps(recs)


def test_classification_records_take_sample_ids_and_plain_lists():
    recs = rank_samples("classification", Y, PROBS, NAMES, sample_ids=["p", "q", "r", "s", "t"], top_k=3)
    assert [r["id"] for r in recs] == ["s", "t", "r", "q", "p"]
    assert recs[0] == cls_record(3, 0, 1, PROBS[3], [1, 2, 0], sample_id="s")


def test_ties_keep_class_order_even_for_many_classes():
    # 40 classes scored .5/.1 alternately: an unstable sort would reorder the equal scores
    names = [f"k{i}" for i in range(40)]
    row = [0.5, 0.1] * 20
    rec = rank_samples("classification", [2], np.array([row]), names, top_k=5)[0]
    assert [t["index"] for t in rec["top"]] == [0, 2, 4, 6, 8]
    assert (rec["pred"], rec["correct"]) == (0, False)
    y = [0, 2, 4, 6, 8, 10, 1]
    m = classification_metrics(y, np.array([row] * len(y)), names)
    assert m["top5"] == pytest.approx(5 / 7)


@pytest.mark.parametrize("task, targets, predictions", [
    ("classification", [0, 1], np.array([[0.9, 0.1, 0.0]])),
    ("detection", [{}, {}], [{}]),
])
def test_lengths_must_agree(task, targets, predictions):
    with pytest.raises(ValueError):
        rank_samples(task, targets, predictions, NAMES)


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="'segmentation'"):
        rank_samples("segmentation", [], [], NAMES)


# --------------------------------------------------------------------------- detection

BOX = [0, 0, 10, 10]
GTS = [
    {},                                                                    # 0: nothing at all
    {"boxes": [BOX], "labels": [0]},                                       # 1: a hit
    {"boxes": [BOX], "labels": [1]},                                       # 2: IoU .4 only
    {"boxes": [BOX, [20, 0, 30, 10]], "labels": [0, 1]},                   # 3: a hit + a mislabel
    {"boxes": [], "labels": []},                                           # 4: two strays
    {"boxes": [BOX], "labels": [0]},                                       # 5: a miss
]
PREDS = [
    {},
    {"boxes": [BOX, [50, 50, 60, 60], [20, 20, 30, 30]], "labels": [0, 1, 1], "scores": [0.9, 0.03, 0.05]},
    {"boxes": [[0, 0, 10, 4]], "labels": [1], "scores": [0.3]},
    {"boxes": [BOX, [20, 0, 30, 10]], "labels": [0, 0], "scores": [0.8, 0.7]},
    {"boxes": [[0, 0, 5, 5], [10, 10, 15, 15]], "labels": [0, 1], "scores": [0.6, 0.6]},
    {"boxes": [], "labels": [], "scores": []},
]


def det_record(index, num_gt, num_pred, missed, fp, mislabeled, max_score, cells, gt, pred):
    return {
        "index": index, "id": index, "num_gt": num_gt, "num_pred": num_pred, "missed": missed,
        "false_positives": fp, "mislabeled": mislabeled, "errors": missed + fp, "is_error": missed + fp > 0,
        "max_score": max_score, "cells": cells, "gt": gt, "pred": pred,
    }


def test_detection_records_exact():
    recs = rank_samples("detection", GTS, PREDS, ["a", "b"])
    no_boxes = {"boxes": [], "labels": []}
    assert recs == [
        # errors 2, most missed first, then index
        det_record(2, 1, 1, 1, 1, 0, 0.3, [[1, 2], [2, 1]], GTS[2], PREDS[2]),
        det_record(3, 2, 2, 1, 1, 1, 0.8, [[0, 0], [1, 0]], GTS[3], PREDS[3]),
        det_record(4, 0, 2, 0, 2, 0, 0.6, [[2, 0], [2, 1]], GTS[4], PREDS[4]),
        # errors 1
        det_record(5, 1, 0, 1, 0, 0, 0.0, [[0, 2]], GTS[5], PREDS[5]),
        # no error; stored predictions keep scores >= 0.05, highest first
        det_record(0, 0, 0, 0, 0, 0, 0.0, [], no_boxes, no_boxes),
        det_record(1, 1, 1, 0, 0, 0, 0.9, [[0, 0]], GTS[1],
                   {"boxes": [BOX, [20, 20, 30, 30]], "labels": [0, 1], "scores": [0.9, 0.05]}),
    ]
    json.dumps(recs)


def test_detection_records_use_both_thresholds():
    # IoU .4 counts at iou_threshold .3; a .3 prediction is ignored at score_threshold .35
    recs = rank_samples("detection", GTS[2:3], PREDS[2:3], ["a", "b"], iou_threshold=0.3)
    assert (recs[0]["missed"], recs[0]["false_positives"], recs[0]["cells"]) == (0, 0, [[1, 1]])
    recs = rank_samples("detection", GTS[2:3], PREDS[2:3], ["a", "b"], iou_threshold=0.3, score_threshold=0.35)
    assert (recs[0]["missed"], recs[0]["false_positives"], recs[0]["num_pred"]) == (1, 0, 0)
    recs = rank_samples("detection", GTS[1:2], PREDS[1:2], ["a", "b"], store_min_score=0.01)
    assert recs[0]["pred"]["scores"] == [0.9, 0.05, 0.03]


def test_stored_and_kept_predictions_keep_index_order_on_ties():
    n = 40
    scores = [0.5, 0.3] * (n // 2)
    pred = {"boxes": [[i, 0, i + 1, 1] for i in range(n)], "labels": [0] * n, "scores": scores}
    expected = list(range(0, n, 2)) + list(range(1, n, 2))
    assert match_detections({}, pred)["kept_pred"] == expected
    assert match_detections({}, pred)["unmatched_pred"] == expected
    rec = rank_samples("detection", [{}], [pred], ["a"])[0]
    assert rec["pred"]["boxes"] == [[float(i), 0.0, i + 1.0, 1.0] for i in expected]
