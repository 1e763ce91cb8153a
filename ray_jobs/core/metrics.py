"""Evaluation metrics: classification from probabilities, detection through pycocotools.

Pure numpy + pycocotools, no torch and no Ray, so the API process, the Ray evaluation task and
the tests all compute the same numbers. Every result is plain JSON (floats, ints, lists, None).

Conventions shared with the training core:
- class indices are 0-based and contiguous over the project's class list;
- detection ground truth / predictions are dicts ``{"boxes": [[x1, y1, x2, y2], ...]`` (pixels),
  ``"labels": [int, ...], "scores": [float, ...]}`` (``scores`` only on predictions);
  ground truth may add ``"difficult": [bool, ...]`` (Pascal VOC's flag, see below).

Difficult ground truth (VOC semantics): a difficult box is neither a hit nor a miss. It does not
count as ground truth (``num_gt``, recall), and a prediction of its class that matches it (IoU at
the threshold) and matches no ordinary box is ignored: not a true positive, not a false positive.
For the COCO figures this is pycocotools' ``iscrowd`` ignore region (``iscrowd`` is what sets
COCOeval's ``ignore`` flag; a bare ``ignore`` key is overwritten), with one change: the IoU with a
difficult box is the ordinary IoU, not COCO's crowd overlap (intersection / detection area), so a
small prediction inside a large difficult box is still a false positive, as in VOC.

Zero division: a precision, recall or F1 whose denominator is 0 is reported as 0.0 (the
scikit-learn ``zero_division=0`` convention); the class still appears in the per-class table.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

__all__ = [
    "classification_metrics",
    "detection_metrics",
    "detection_confusion_matrix",
    "match_detections",
    "rank_samples",
    "box_iou",
]

PR_CURVE_POINTS = 21  # COCO's 101-point recall grid thinned for the UI (every 5th point)


# --------------------------------------------------------------------------- classification


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num/den with 0 where den == 0 (the documented zero-division rule)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _prf_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # rows = truth
    predicted = cm.sum(axis=0).astype(np.float64)  # cols = prediction
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, top-5, macro/weighted P/R/F1, per-class table and confusion matrix.

    ``probs`` is (N, C) scores (softmax probabilities or logits: only the ranking matters).
    The macro average runs over the classes that occur in the truth or the predictions (as
    scikit-learn does by default) so a class absent from the split doesn't drag it to 0;
    ``weighted`` weights by support. ``top5`` is None when there are 5 classes or fewer.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(list(y_true), dtype=np.int64)
    n_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (N, {n_classes}), got {probs.shape}")
    if probs.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {probs.shape[0]} rows of probabilities")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes - 1}]")

    n = int(y.size)
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    stats = _prf_from_confusion(cm)

    present = (stats["support"] > 0) | (stats["predicted"] > 0)
    weights = stats["support"]

    def _avg(values: np.ndarray, kind: str) -> float:
        if kind == "macro":
            return float(values[present].mean()) if present.any() else 0.0
        return float((values * weights).sum() / weights.sum()) if weights.sum() else 0.0

    top5 = None
    if n_classes > 5 and n:
        # stable sort on -probs: ties resolved by class index, deterministic across runs
        top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        top5 = float((top == y[:, None]).any(axis=1).mean())

    return {
        "task": "classification",
        "num_samples": n,
        "num_classes": n_classes,
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "top5": top5,
        "macro": {k: _avg(stats[k], "macro") for k in ("precision", "recall", "f1")},
        "weighted": {k: _avg(stats[k], "weighted") for k in ("precision", "recall", "f1")},
        "per_class": [
            {
                "index": i,
                "name": str(name),
                "precision": float(stats["precision"][i]),
                "recall": float(stats["recall"][i]),
                "f1": float(stats["f1"][i]),
                "support": int(stats["support"][i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": {
            "labels": [str(c) for c in class_names],
            "matrix": cm.tolist(),  # rows = truth, columns = prediction
        },
    }


# --------------------------------------------------------------------------- detection helpers


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) for xyxy boxes, continuous coordinates (no +1)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return _safe_div(inter, union)


def _as_arrays(d: dict, with_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(d.get("boxes", []), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(d.get("labels", []), dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if with_scores:
        scores = np.asarray(d.get("scores", []), dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    else:
        scores = np.ones(len(boxes))
    return boxes, labels, scores


def _difficult(d: dict, n: int) -> np.ndarray:
    """The ``difficult`` flags of a ground-truth dict (all False when absent)."""
    flags = np.asarray(d.get("difficult", [False] * n), dtype=bool).reshape(-1)
    if len(flags) != n:
        raise ValueError(f"{n} boxes but {len(flags)} difficult flags")
    return flags


def match_detections(
    gt: dict, pred: dict, iou_threshold: float = 0.5, score_threshold: float = 0.25
) -> dict[str, list]:
    """Greedy one-to-one matching of one image's predictions to its ground truth.

    Predictions with score >= ``score_threshold`` are taken highest score first; each takes the
    unmatched ground-truth box with IoU >= ``iou_threshold``, preferring one of its own label
    (then the highest IoU), so a correct box is not booked as a confusion just because a box of
    another class overlaps it more. Difficult ground truth (``gt["difficult"]``) is never paired:
    a prediction with no ordinary box of its own label to take, but a difficult box of its label
    at the IoU threshold, is ignored (before it may pair with a box of another label), and a
    difficult box left over is not a miss. Returns indices into the original lists:
    ``pairs`` [(gt_i, pred_j)], ``unmatched_gt`` [i], ``unmatched_pred`` [j], ``kept_pred`` [j],
    ``ignored_pred`` [j] (predictions on difficult boxes), ``difficult_gt`` [i].
    """
    g_boxes, g_labels, _ = _as_arrays(gt, with_scores=False)
    p_boxes, p_labels, p_scores = _as_arrays(pred, with_scores=True)
    difficult = _difficult(gt, len(g_boxes))
    kept = [int(j) for j in np.argsort(-p_scores, kind="stable") if p_scores[j] >= score_threshold]
    ious = box_iou(g_boxes, p_boxes)
    gt_free = ~difficult
    pairs: list[tuple[int, int]] = []
    unmatched_pred: list[int] = []
    ignored_pred: list[int] = []
    for j in kept:
        hits = ious[:, j] >= iou_threshold if len(g_boxes) else np.zeros(0, dtype=bool)
        cand = np.flatnonzero(gt_free & hits)
        same = [i for i in cand if g_labels[i] == p_labels[j]]
        if not same and np.any(difficult & hits & (g_labels == p_labels[j])):
            ignored_pred.append(j)
            continue
        if len(cand) == 0:
            unmatched_pred.append(j)
            continue
        pool = same or list(cand)
        i = int(max(pool, key=lambda k: ious[k, j]))
        gt_free[i] = False
        pairs.append((i, j))
    return {
        "pairs": pairs,
        "unmatched_gt": [int(i) for i in np.flatnonzero(gt_free)],
        "unmatched_pred": unmatched_pred,
        "kept_pred": kept,
        "ignored_pred": ignored_pred,
        "difficult_gt": [int(i) for i in np.flatnonzero(difficult)],
    }


def detection_confusion_matrix(
    gts: Sequence[dict],
    preds: Sequence[dict],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> np.ndarray:
    """(K+1, K+1) counts, rows = truth, columns = prediction, index K = background.

    Matched pairs count at [gt_label, pred_label]; a prediction matching nothing is a false
    positive at [background, pred_label]; a missed object is at [gt_label, background]. Difficult
    boxes and the predictions on them count nowhere (see ``match_detections``).
    [background, background] stays 0 (there is nothing to count).
    """
    bg = num_classes
    cm = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for gt, pred in zip(gts, preds, strict=True):
        m = match_detections(gt, pred, iou_threshold, score_threshold)
        g_labels = np.asarray(gt.get("labels", []), dtype=np.int64).reshape(-1)
        p_labels = np.asarray(pred.get("labels", []), dtype=np.int64).reshape(-1)
        for i, j in m["pairs"]:
            cm[g_labels[i], p_labels[j]] += 1
        for j in m["unmatched_pred"]:
            cm[bg, p_labels[j]] += 1
        for i in m["unmatched_gt"]:
            cm[g_labels[i], bg] += 1
    return cm


def _coco_datasets(gts, preds, num_classes):
    """In-memory COCO ground truth / results dicts.

    pycocotools details that matter: image and annotation ids start at 1 (COCOeval uses id 0
    as "unmatched"), category ids are ``label + 1``, bbox is [x, y, w, h], ``area`` = w*h
    (what ``loadRes`` computes for detections and what torchmetrics uses), iscrowd = 0 except
    for difficult ground truth (iscrowd = 1: an ignore region, see ``_IgnoreRegionEval``).
    Every image is listed, including ones without objects, so their detections count as
    false positives.
    """
    images = [{"id": k + 1} for k in range(len(gts))]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]

    def _anns(items, with_scores):
        anns = []
        for k, d in enumerate(items):
            boxes, labels, scores = _as_arrays(d, with_scores)
            crowd = np.zeros(len(boxes), dtype=bool) if with_scores else _difficult(d, len(boxes))
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"image {k}: labels must be in [0, {num_classes - 1}]")
            for box, label, score, is_crowd in zip(boxes, labels, scores, crowd):
                x1, y1, x2, y2 = (float(v) for v in box)
                w, h = x2 - x1, y2 - y1
                ann = {
                    "id": len(anns) + 1,
                    "image_id": k + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(is_crowd),
                }
                if with_scores:
                    ann["score"] = float(score)
                anns.append(ann)
        return anns

    gt_ds = {"images": images, "categories": categories, "annotations": _anns(gts, False)}
    dt_ds = {"images": images, "categories": categories, "annotations": _anns(preds, True)}
    return gt_ds, dt_ds


def _ignore_region_eval():
    """COCOeval whose ``iscrowd`` boxes (our difficult ones) are ignore regions matched by the
    ordinary IoU. pycocotools' own computeIoU uses the crowd overlap (intersection / detection
    area) for them, which would also swallow small false positives inside a large difficult box."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    class _IgnoreRegionEval(COCOeval):
        def computeIoU(self, imgId, catId):  # noqa: N802, N803 (pycocotools' names); bbox, useCats=1
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
            if len(gt) == 0 and len(dt) == 0:
                return []
            order = np.argsort([-d["score"] for d in dt], kind="mergesort")
            dt = [dt[i] for i in order][: self.params.maxDets[-1]]
            return mask_utils.iou([d["bbox"] for d in dt], [g["bbox"] for g in gt], [0] * len(gt))

    return _IgnoreRegionEval


def _coco_eval(gts, preds, num_classes):
    """Run COCOeval (bbox) quietly and return it after evaluate/accumulate/summarize."""
    from pycocotools.coco import COCO

    COCOeval = _ignore_region_eval()  # noqa: N806

    gt_ds, dt_ds = _coco_datasets(gts, preds, num_classes)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_ds
        coco_gt.createIndex()
        # built directly rather than with loadRes, which fails on an empty result list
        coco_dt = COCO()
        coco_dt.dataset = dt_ds
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _stat(v: float) -> float | None:
    """COCOeval reports -1 when there is nothing to average (e.g. no ground truth)."""
    return None if v < 0 else float(v)


def _mean_valid(p: np.ndarray) -> float | None:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def detection_metrics(
    gts: Sequence[dict],
    preds: Sequence[dict],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> dict[str, Any]:
    """COCO mAPs, per-class AP, PR curves (pycocotools) and a confusion matrix with background.

    mAP figures are COCO's (area "all", maxDets 100, no score threshold: every prediction
    counts, as COCO expects). The confusion matrix and sample ranking instead use
    ``iou_threshold`` / ``score_threshold``. Classes without ground truth get ``None`` AP.
    Difficult boxes are ignored (module docstring); ``num_gt`` leaves them out, ``num_difficult``
    counts them.
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} prediction entries")
    k = len(class_names)
    ev = _coco_eval(gts, preds, k)
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    scores = ev.eval["scores"]
    iou_thrs = ev.params.iouThrs
    rec_thrs = ev.params.recThrs
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    step = max(1, (len(rec_thrs) - 1) // (PR_CURVE_POINTS - 1))
    grid = list(range(0, len(rec_thrs), step))

    per_class, pr_curves = [], []
    for c, name in enumerate(class_names):
        num_gt = num_difficult = 0
        for g in gts:
            of_class = np.asarray(g.get("labels", []), dtype=np.int64).reshape(-1) == c
            hard = _difficult(g, len(of_class))
            num_gt += int(np.sum(of_class & ~hard))
            num_difficult += int(np.sum(of_class & hard))
        per_class.append(
            {
                "index": c,
                "name": str(name),
                "ap": _mean_valid(precision[:, :, c, 0, -1]),
                "ap50": _mean_valid(precision[t50, :, c, 0, -1]),
                "ap75": _mean_valid(precision[int(np.argmin(np.abs(iou_thrs - 0.75))), :, c, 0, -1]),
                "num_gt": num_gt,
                "num_difficult": num_difficult,
            }
        )
        p = precision[t50, :, c, 0, -1]
        s = scores[t50, :, c, 0, -1]
        pr_curves.append(
            {
                "index": c,
                "name": str(name),
                "iou": float(iou_thrs[t50]),
                "recall": [float(rec_thrs[i]) for i in grid],
                # -1 means "no ground truth for this class": the curve is empty then
                "precision": [float(p[i]) for i in grid] if num_gt else [],
                "score": [float(s[i]) for i in grid] if num_gt else [],
            }
        )

    cm = detection_confusion_matrix(gts, preds, k, iou_threshold, score_threshold)
    return {
        "task": "detection",
        "num_images": len(gts),
        "num_classes": k,
        "map": _stat(ev.stats[0]),
        "map50": _stat(ev.stats[1]),
        "map75": _stat(ev.stats[2]),
        "mar100": _stat(ev.stats[8]),
        "per_class": per_class,
        "pr_curves": pr_curves,
        "confusion_matrix": {
            "labels": [str(c) for c in class_names] + ["background"],
            "matrix": cm.tolist(),  # rows = truth, columns = prediction, last = background
            "iou_threshold": float(iou_threshold),
            "score_threshold": float(score_threshold),
        },
    }


# --------------------------------------------------------------------------- per-sample ranking


def _classification_records(y_true, probs, class_names, sample_ids, top_k):
    probs = np.asarray(probs, dtype=np.float64)
    records = []
    for n, (t, row) in enumerate(zip(y_true, probs, strict=True)):
        order = np.argsort(-row, kind="stable")
        p = int(order[0])
        t = int(t)
        records.append(
            {
                "index": n,
                "id": sample_ids[n] if sample_ids is not None else n,
                "true": t,
                "true_name": str(class_names[t]),
                "pred": p,
                "pred_name": str(class_names[p]),
                "score": float(row[p]),
                "true_score": float(row[t]),
                "correct": p == t,
                "is_error": p != t,
                "cell": [t, p],
                "top": [
                    {"index": int(i), "name": str(class_names[i]), "score": float(row[i])}
                    for i in order[:top_k]
                ],
            }
        )
    # errors first, most confident error first; then correct, least confident first
    records.sort(key=lambda r: (r["correct"], -r["score"] if not r["correct"] else r["score"], r["index"]))
    return records


def _jsonable_dets(d: dict, keep: Sequence[int] | None = None) -> dict:
    boxes, labels, scores = _as_arrays(d, with_scores="scores" in d)
    idx = list(range(len(boxes))) if keep is None else list(keep)
    out = {"boxes": [[float(v) for v in boxes[i]] for i in idx], "labels": [int(labels[i]) for i in idx]}
    if "difficult" in d:
        flags = _difficult(d, len(boxes))
        out["difficult"] = [bool(flags[i]) for i in idx]
    if "scores" in d:
        out["scores"] = [float(scores[i]) for i in idx]
    return out


def _detection_records(gts, preds, class_names, sample_ids, iou_threshold, score_threshold, store_min_score):
    bg = len(class_names)
    records = []
    for n, (gt, pred) in enumerate(zip(gts, preds, strict=True)):
        m = match_detections(gt, pred, iou_threshold, score_threshold)
        g_labels = np.asarray(gt.get("labels", []), dtype=np.int64).reshape(-1)
        p_labels = np.asarray(pred.get("labels", []), dtype=np.int64).reshape(-1)
        p_scores = np.asarray(pred.get("scores", []), dtype=np.float64).reshape(-1)
        mislabeled = sum(1 for i, j in m["pairs"] if g_labels[i] != p_labels[j])
        # a mislabeled match is one missed object and one false positive, as in per-class AP
        missed = len(m["unmatched_gt"]) + mislabeled
        false_pos = len(m["unmatched_pred"]) + mislabeled
        cells = {(int(g_labels[i]), int(p_labels[j])) for i, j in m["pairs"]}
        cells |= {(bg, int(p_labels[j])) for j in m["unmatched_pred"]}
        cells |= {(int(g_labels[i]), bg) for i in m["unmatched_gt"]}
        stored = [j for j in np.argsort(-p_scores, kind="stable") if p_scores[j] >= store_min_score]
        records.append(
            {
                "index": n,
                "id": sample_ids[n] if sample_ids is not None else n,
                "num_gt": int(len(g_labels)) - len(m["difficult_gt"]),
                "num_pred": len(m["kept_pred"]),
                "missed": missed,
                "false_positives": false_pos,
                "mislabeled": mislabeled,
                "errors": missed + false_pos,
                "is_error": missed + false_pos > 0,
                "max_score": float(p_scores.max()) if p_scores.size else 0.0,
                "cells": sorted([list(c) for c in cells]),
                "gt": _jsonable_dets(gt),
                "pred": _jsonable_dets(pred, stored),
            }
        )
    records.sort(key=lambda r: (-r["errors"], -r["missed"], r["index"]))
    return records


# Detections scoring below this are dropped before anything uses them (metrics, stored samples,
# try-one-image, an export's metric), so the reported mAP can be recomputed from the detections the
# API returns. (SSDLite proposes boxes down to 0.001; torchvision's other detectors stop at 0.05.)
MIN_DETECTION_SCORE = 0.05


def confident(prediction: dict) -> dict:
    """A detection result (boxes, labels, scores, maybe class_names) without the detections
    scoring below MIN_DETECTION_SCORE."""
    keep = [i for i, score in enumerate(prediction["scores"]) if score >= MIN_DETECTION_SCORE]
    return {key: [values[i] for i in keep] for key, values in prediction.items()}


def rank_samples(
    task: str,
    targets: Sequence,
    predictions: Any,
    class_names: Sequence[str],
    sample_ids: Sequence | None = None,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
    top_k: int = 5,
    store_min_score: float = 0.05,
) -> list[dict]:
    """Per-sample records, worst first, for the error gallery (``?kind=errors``).

    classification: ``targets`` = true labels, ``predictions`` = (N, C) probabilities.
    Misclassified samples come first, most confident mistake first, then correct ones with the
    least confident first. Each record has true/pred/score, ``top`` (top_k), ``cell`` [t, p].

    detection: ``targets`` / ``predictions`` are per-image dicts. Errors = missed objects +
    false positives at the thresholds (a mislabeled box counts once in each); worst first.
    ``cells`` lists the confusion-matrix cells the image contributes to (background index K)
    so the heatmap can link to images; ``pred`` keeps detections with score >= store_min_score.
    """
    if task == "classification":
        return _classification_records(targets, predictions, class_names, sample_ids, top_k)
    if task == "detection":
        return _detection_records(
            targets, predictions, class_names, sample_ids, iou_threshold, score_threshold, store_min_score
        )
    raise ValueError(f"Invalid task {task!r}. Only 'classification' and 'detection' are supported.")
