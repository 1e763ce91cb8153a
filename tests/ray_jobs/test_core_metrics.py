"""Metrics checked by hand and against pycocotools run independently on the same predictions."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ray_jobs.core.metrics import (
    box_iou,
    classification_metrics,
    detection_confusion_matrix,
    detection_metrics,
    rank_samples,
)

# --------------------------------------------------------------------------- classification

# truth:       a a a b b c
# prediction:  a a b b c c
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


def _probs(preds, n_classes, confidences=None):
    p = np.full((len(preds), n_classes), 0.1 / (n_classes - 1))
    for i, c in enumerate(preds):
        p[i, c] = 0.9 if confidences is None else confidences[i]
    return p


def test_classification_hand_confusion_matrix():
    m = classification_metrics(Y_TRUE, _probs(Y_PRED, 3), ["a", "b", "c"])
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top5"] is None  # only 3 classes
    per = {r["name"]: r for r in m["per_class"]}
    # a: P = 2/2, R = 2/3, F1 = 0.8 ; b: P = 1/2, R = 1/2 ; c: P = 1/2, R = 1/1, F1 = 2/3
    assert per["a"] == {"index": 0, "name": "a", "precision": 1.0, "recall": pytest.approx(2 / 3),
                        "f1": pytest.approx(0.8), "support": 3}
    assert (per["b"]["precision"], per["b"]["recall"], per["b"]["f1"]) == (0.5, 0.5, 0.5)
    assert (per["c"]["precision"], per["c"]["recall"]) == (0.5, 1.0)
    assert per["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro"]["precision"] == pytest.approx(2 / 3)
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted"]["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert m["weighted"]["recall"] == pytest.approx(4 / 6)
    assert m["weighted"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    json.dumps(m)  # plain JSON


def test_classification_zero_division_is_zero_and_absent_classes_skip_macro():
    base = classification_metrics(Y_TRUE, _probs(Y_PRED, 3), ["a", "b", "c"])
    # class d: never true, never predicted -> all zeros, not part of the macro average
    m = classification_metrics(Y_TRUE, _probs(Y_PRED, 4), ["a", "b", "c", "d"])
    d = m["per_class"][3]
    assert (d["precision"], d["recall"], d["f1"], d["support"]) == (0.0, 0.0, 0.0, 0)
    assert m["macro"] == pytest.approx(base["macro"])
    # class d predicted once but never true: precision 0/1, recall 0/0 -> 0, counted in macro
    m2 = classification_metrics([0, 1], _probs([0, 3], 4), ["a", "b", "c", "d"])
    assert m2["per_class"][3]["precision"] == 0.0
    assert m2["per_class"][1]["recall"] == 0.0  # b missed
    assert m2["macro"]["recall"] == pytest.approx((1 + 0 + 0) / 3)  # over a, b, d


def test_top5():
    n_classes = 7
    # true class at rank 1, 3, 5 and 6 of the scores -> top-5 = 3/4, top-1 = 1/4
    ranks = [1, 3, 5, 6]
    probs, y = [], []
    for r in ranks:
        row = np.linspace(0.3, 0.01, n_classes)  # class i has rank i+1
        probs.append(row)
        y.append(r - 1)
    m = classification_metrics(y, np.array(probs), [f"c{i}" for i in range(n_classes)])
    assert m["top5"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.25)


def test_classification_rejects_bad_shapes():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError):
        classification_metrics([0, 5], np.zeros((2, 3)), ["a", "b", "c"])


def test_rank_samples_classification_order():
    y = [0, 1, 2, 0, 1]
    preds = [1, 1, 0, 0, 1]
    conf = [0.6, 0.9, 0.8, 0.5, 0.7]
    recs = rank_samples("classification", y, _probs(preds, 3, conf), ["a", "b", "c"], sample_ids=list("vwxyz"))
    # errors (0: .6, 2: .8) most confident first, then correct (1: .9, 3: .5, 4: .7) least confident first
    assert [r["index"] for r in recs] == [2, 0, 3, 4, 1]
    assert [r["is_error"] for r in recs] == [True, True, False, False, False]
    assert recs[0]["id"] == "x" and recs[0]["cell"] == [2, 0] and recs[0]["pred_name"] == "a"
    assert recs[0]["score"] == pytest.approx(0.8)
    assert len(recs[0]["top"]) == 3 and recs[0]["top"][0]["index"] == 0
    json.dumps(recs)


# --------------------------------------------------------------------------- detection


def _independent_coco(gts, preds, n_classes, cat_ids=None):
    """The standard pycocotools recipe (loadRes of xywh results), written out separately."""
    images = [{"id": i + 1} for i in range(len(gts))]
    anns, aid = [], 1
    for i, g in enumerate(gts):
        for b, lab in zip(g["boxes"], g["labels"]):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": aid, "image_id": i + 1, "category_id": lab + 1, "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": 0})
            aid += 1
    res = [
        {"image_id": i + 1, "category_id": lab + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
        for i, p in enumerate(preds)
        for b, lab, s in zip(p["boxes"], p["labels"], p["scores"])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


# one image, two objects, IoUs chosen off the .05 threshold grid:
#   class 0: prediction IoU 0.72 (TP at .50-.70 -> 5/10 thresholds), score .9
#   class 1: prediction IoU 0.62 (TP at .50-.60 -> 3/10), score .8, behind a false positive (.95)
KNOWN_GT = [{"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": [0, 1]}]
KNOWN_PRED = [{"boxes": [[0, 0, 10, 7.2], [20, 20, 40, 32.4], [100, 100, 110, 110]],
               "labels": [0, 1, 1], "scores": [0.9, 0.8, 0.95]}]


def test_detection_known_ious_by_hand_and_pycocotools():
    ious = box_iou(np.array(KNOWN_GT[0]["boxes"]), np.array(KNOWN_PRED[0]["boxes"]))
    assert ious[0, 0] == pytest.approx(0.72) and ious[1, 1] == pytest.approx(0.62)
    m = detection_metrics(KNOWN_GT, KNOWN_PRED, ["a", "b"])
    # class 0: AP 1 at 5 thresholds -> 0.5, AP50 1
    # class 1: the FP outranks the TP -> precision 1/2 at every recall -> AP 0.5 at 3 thresholds
    a, b = m["per_class"]
    assert a["ap"] == pytest.approx(0.5, abs=1e-12) and a["ap50"] == pytest.approx(1.0)
    assert b["ap"] == pytest.approx(0.15, abs=1e-12) and b["ap50"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(0.325, abs=1e-12)
    assert m["map50"] == pytest.approx(0.75, abs=1e-12)
    assert m["map75"] == pytest.approx(0.0, abs=1e-12)
    stats = _independent_coco(KNOWN_GT, KNOWN_PRED, 2)
    assert [m["map"], m["map50"], m["map75"]] == pytest.approx(list(stats[:3]), abs=1e-6)
    # PR curve at IoU .5, 101-point grid thinned to 21 points
    pr = m["pr_curves"][1]
    assert len(pr["recall"]) == len(pr["precision"]) == 21
    assert pr["recall"][0] == 0.0 and pr["recall"][-1] == 1.0
    assert pr["precision"] == pytest.approx([0.5] * 21)


def _random_case(seed, n_images=8, n_classes=3):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for i in range(n_images):
        n = int(rng.integers(0, 5)) if i else 0  # image 0 has no objects: its detections are FPs
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(8, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        gts.append({"boxes": boxes.tolist(), "labels": rng.integers(0, n_classes, n).tolist()})
        k = int(rng.integers(0, 7)) if i != 3 else 0  # image 3 has no predictions
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(8, 80, (k, 2))
        pb = np.concatenate([xy, xy + wh], 1)
        j = min(n, k)
        pb[:j] = boxes[:j] + rng.normal(0, 4, (j, 4))  # near-misses and hits at assorted IoUs
        labels = rng.integers(0, n_classes, k)
        labels[:j] = np.where(rng.uniform(size=j) < 0.8, gts[-1]["labels"][:j], labels[:j])
        preds.append({"boxes": pb.tolist(), "labels": labels.tolist(), "scores": rng.uniform(0, 1, k).tolist()})
    return gts, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_map_matches_pycocotools(seed):
    gts, preds = _random_case(seed)
    names = ["a", "b", "c"]
    m = detection_metrics(gts, preds, names)
    stats = _independent_coco(gts, preds, 3)
    assert m["map"] == pytest.approx(stats[0], abs=1e-6)
    assert m["map50"] == pytest.approx(stats[1], abs=1e-6)
    assert m["map75"] == pytest.approx(stats[2], abs=1e-6)
    assert m["mar100"] == pytest.approx(stats[8], abs=1e-6)
    for c in range(3):  # per-class AP == COCOeval restricted to that category
        cs = _independent_coco(gts, preds, 3, cat_ids=[c + 1])
        if cs[0] < 0:
            assert m["per_class"][c]["ap"] is None
        else:
            assert m["per_class"][c]["ap"] == pytest.approx(cs[0], abs=1e-6)
            assert m["per_class"][c]["ap50"] == pytest.approx(cs[1], abs=1e-6)
    json.dumps(m)


def test_detection_empty_inputs():
    gts = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
    m = detection_metrics(gts, [{"boxes": [], "labels": [], "scores": []}], ["a", "b"])
    assert m["map"] == 0.0 and m["per_class"][1]["ap"] is None  # no ground truth for b
    assert m["confusion_matrix"]["matrix"] == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    m = detection_metrics([{"boxes": [], "labels": []}], [{"boxes": [], "labels": [], "scores": []}], ["a"])
    assert m["map"] is None  # nothing to average


# image 0: a hit (0->0), a mislabel (gt 0 predicted as 1), a miss (gt 1), a FP (pred 1),
#          and a pred under the score threshold (ignored by the matrix)
# image 1: two predictions on one object: the higher score matches, the other is a FP (0)
CM_GT = [
    {"boxes": [[0, 0, 10, 10], [20, 0, 40, 20], [50, 50, 70, 70]], "labels": [0, 0, 1]},
    {"boxes": [[0, 0, 30, 30]], "labels": [0]},
]
CM_PRED = [
    {"boxes": [[0, 0, 10, 9], [20, 0, 40, 19], [100, 100, 120, 120], [50, 50, 70, 69]],
     "labels": [0, 1, 1, 0], "scores": [0.9, 0.8, 0.6, 0.1]},
    {"boxes": [[0, 0, 30, 29], [1, 1, 30, 30]], "labels": [0, 0], "scores": [0.7, 0.5]},
]


def test_detection_confusion_matrix_with_background():
    cm = detection_confusion_matrix(CM_GT, CM_PRED, 2, iou_threshold=0.5, score_threshold=0.25)
    #            pred a  pred b  background(missed)
    assert cm.tolist() == [
        [2, 1, 0],  # truth a: 2 hits, 1 predicted as b
        [0, 0, 1],  # truth b: missed
        [1, 1, 0],  # background: duplicate box (a), stray box (b)
    ]
    m = detection_metrics(CM_GT, CM_PRED, ["a", "b"])
    assert m["confusion_matrix"]["labels"] == ["a", "b", "background"]
    assert m["confusion_matrix"]["matrix"] == cm.tolist()
    # a lower score threshold lets the 0.1 box in: it matches the missed b object with the wrong label
    cm2 = detection_confusion_matrix(CM_GT, CM_PRED, 2, score_threshold=0.05)
    assert cm2[1].tolist() == [1, 0, 0]


def test_confusion_prefers_same_label_over_higher_iou():
    gt = [{"boxes": [[0, 0, 10, 10], [0, 0, 10, 12]], "labels": [0, 1]}]
    pred = [{"boxes": [[0, 0, 10, 11.5]], "labels": [0], "scores": [0.9]}]  # IoU .87 with a, .96 with b
    cm = detection_confusion_matrix(gt, pred, 2)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_rank_samples_detection_order():
    gts = CM_GT + [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    preds = CM_PRED + [{"boxes": [[0, 0, 10, 10]], "labels": [1], "scores": [0.99]}]
    recs = rank_samples("detection", gts, preds, ["a", "b"], sample_ids=["i0", "i1", "i2"])
    assert [r["id"] for r in recs] == ["i0", "i1", "i2"]
    r0 = recs[0]
    # missed: gt b + the mislabeled a; false positives: stray b + the mislabel
    assert (r0["missed"], r0["false_positives"], r0["mislabeled"], r0["errors"]) == (2, 2, 1, 4)
    assert r0["cells"] == [[0, 0], [0, 1], [1, 2], [2, 1]]
    assert r0["pred"]["scores"] == [0.9, 0.8, 0.6, 0.1]  # stored down to 0.05, sorted
    assert (recs[1]["missed"], recs[1]["false_positives"]) == (0, 1)
    assert recs[2]["is_error"] is False
    json.dumps(recs)
