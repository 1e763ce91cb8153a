"""Checks of an exported file against PyTorch: parity on a real batch, the evaluation metric with
both runtimes, and latency at batch 1 and N. Every returned dict is plain JSON."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..metrics import box_iou, confident, detection_metrics
from .common import as_tensor, check_task, cpu_eval_copy, preprocess_image, to_numpy_dets
from .formats import check, load_runner

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}  # max abs logit difference
DETECTION_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}  # max score difference


class PyTorchRunner:
    """Eager PyTorch reference with the same inputs/outputs as the exported runtimes."""

    def __init__(self, model: nn.Module, task: str, device: str | torch.device = "cpu",
                 label_offset: int = 1, half: bool = False):
        check_task(task)
        self.task, self.device, self.half, self.label_offset = task, torch.device(device), half, label_offset
        self.model = model.to(self.device).eval()
        if half:
            self.model = self.model.half()

    @torch.no_grad()
    def __call__(self, batch):
        x = as_tensor(batch).to(self.device, torch.float16 if self.half else torch.float32)
        if self.task == "classification":
            return self.model(x).float().cpu().numpy()
        outs = self.model(list(x.unbind(0)))
        return [to_numpy_dets(o["boxes"], o["scores"], o["labels"] - self.label_offset) for o in outs]


# --------------------------------------------------------------------------- parity


def match_detection_sets(ref: dict, got: dict, top_k: int, iou_min: float, min_score: float = 0.0):
    """Greedy match of ref's top-k (by score, at least ``min_score``) to any of got's boxes with
    the same label, closest in box and score first; returns (ref count, box diffs, score diffs).

    Matching against all of ``got`` (not its top-k) keeps near-tied scores at the k-th place
    from counting as misses; ``min_score`` leaves out the near-zero candidates an undertrained
    detector emits, which appear or vanish at the model's own score cut-off by rounding alone;
    choosing the candidate closest in (1 - IoU) + |score difference| keeps near-duplicate
    boxes from stealing each other's partner.
    """
    order = np.argsort(-ref["scores"], kind="stable")
    order = order[ref["scores"][order] >= min_score][:top_k]
    ious = box_iou(ref["boxes"][order], got["boxes"])
    free = np.ones(len(got["boxes"]), dtype=bool)
    box_diffs, score_diffs = [], []
    for row, i in enumerate(order):
        cand = np.flatnonzero(free & (got["labels"] == ref["labels"][i]) & (ious[row] >= iou_min))
        if cand.size == 0:
            continue
        cost = (1.0 - ious[row, cand]) + np.abs(got["scores"][cand] - ref["scores"][i])
        j = int(cand[np.argmin(cost)])
        free[j] = False
        box_diffs.append(float(np.abs(ref["boxes"][i] - got["boxes"][j]).max()))
        score_diffs.append(float(abs(ref["scores"][i] - got["scores"][j])))
    return len(order), box_diffs, score_diffs


def _classification_parity(ref_runner, runner, batch, tol: float) -> dict[str, Any]:
    ref1, got1 = ref_runner(batch[:1]), runner(batch[:1])
    refn, gotn = ref_runner(batch), runner(batch)
    d1 = float(np.abs(ref1 - got1).max())
    dn = float(np.abs(refn - gotn).max())
    return {
        "batch_sizes": [1, int(len(batch))],
        "max_abs_diff": max(d1, dn),
        "max_abs_diff_batch1": d1,
        "max_abs_diff_batchN": dn,
        "mean_abs_diff": float(np.abs(refn - gotn).mean()),
        "top1_agreement": float((refn.argmax(1) == gotn.argmax(1)).mean()),
        "tolerance": tol,
        "passed": max(d1, dn) <= tol,
    }


def _detection_parity(ref_runner, runner, batch, tol, top_k, iou_min, min_score) -> dict[str, Any]:
    refs, gots = ref_runner(batch), runner(batch)
    total, box_diffs, score_diffs = 0, [], []
    for ref, got in zip(refs, gots):
        n, b, s = match_detection_sets(ref, got, top_k, iou_min, min_score)
        total += n
        box_diffs += b
        score_diffs += s
    rate = len(box_diffs) / total if total else 1.0
    max_score = max(score_diffs, default=0.0)
    return {
        "num_images": int(len(batch)),
        "top_k": top_k,
        "iou_min": iou_min,
        "min_score": min_score,
        "num_reference": total,
        "num_matched": len(box_diffs),
        "match_rate": rate,
        "max_box_diff": max(box_diffs, default=0.0),
        "max_score_diff": max_score,
        "tolerance": tol,
        "passed": rate >= 0.9 and max_score <= tol,
    }


def parity_check(
    model: nn.Module,
    task: str,
    exported_path: str | os.PathLike,
    fmt: str,
    sample_batch,
    precision: str = "fp32",
    tolerance: float | None = None,
    top_k: int = 20,
    iou_min: float = 0.9,
    label_offset: int = 1,
    device: str = "cpu",
    min_score: float = 0.05,
) -> dict[str, Any]:
    """Compare PyTorch eager with the exported file on a real (preprocessed) batch.

    classification: max abs logit difference at batch 1 (first image) and batch N (the whole
    batch, exercising the dynamic axis), plus top-1 agreement. ``passed`` = max diff <=
    tolerance (1e-4 fp32, 5e-2 fp16 by default).
    detection: each image's top-k PyTorch detections matched to the exported ones (same label,
    IoU >= iou_min); match rate, max box (pixels) and score differences. ``passed`` = match
    rate >= 0.9 and score diff <= tolerance (1e-3 fp32 / 5e-2 fp16 by default).
    """
    check(task, fmt, precision)
    batch = as_tensor(sample_batch).float()
    ref_runner = PyTorchRunner(cpu_eval_copy(model), task, device=device, label_offset=label_offset)
    runner = load_runner(exported_path, fmt, task, device=device)
    if task == "classification":
        tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[precision]
        return {"format": fmt, "task": task, **_classification_parity(ref_runner, runner, batch, tol)}
    tol = tolerance if tolerance is not None else DETECTION_TOLERANCE[precision]
    return {"format": fmt, "task": task,
            **_detection_parity(ref_runner, runner, batch, tol, top_k, iou_min, min_score)}


# --------------------------------------------------------------------------- metric delta


def sample_batch(paths: list[str], preprocess: dict) -> np.ndarray:
    """The images at ``paths`` preprocessed exactly as the bundle does, as one (N, 3, H, W) batch."""
    return np.concatenate([preprocess_image(p, preprocess)[0] for p in paths])


def runtime_metric(task: str, runner: Callable, samples: list[dict], preprocess: dict,
                   class_names: list[str]) -> float | None:
    """Accuracy (classification) or mAP@.5 (detection) of one runtime on the samples, using
    exactly the bundle's preprocessing; detection boxes are scaled back to image pixels and, as
    in an evaluation, detections scoring below MIN_DETECTION_SCORE are left out."""
    if task == "classification":
        correct = 0
        for start in range(0, len(samples), 32):
            chunk = samples[start:start + 32]
            logits = runner(sample_batch([s["path"] for s in chunk], preprocess))
            correct += int((np.asarray(logits).argmax(1) == np.array([s["label"] for s in chunk])).sum())
        return correct / len(samples)
    size = preprocess["image_size"]
    preds = []
    for s in samples:
        x, (w, h) = preprocess_image(s["path"], preprocess)
        det = runner(x)[0]
        scale = np.array([w / size, h / size, w / size, h / size])
        preds.append(confident({"boxes": (np.asarray(det["boxes"]).reshape(-1, 4) * scale).tolist(),
                                "labels": np.asarray(det["labels"]).astype(int).tolist(),
                                "scores": np.asarray(det["scores"]).tolist()}))
    gts = [{"boxes": s["boxes"], "labels": s["labels"], "difficult": s.get("difficult", [False] * len(s["boxes"]))}
           for s in samples]
    return detection_metrics(gts, preds, class_names)["map50"]


# --------------------------------------------------------------------------- latency


def measure_latency(runner: Callable, batch, iters: int = 20, warmup: int = 3) -> dict[str, float]:
    """Wall time of ``runner(batch)`` from a host batch to host outputs (what a caller sees)."""
    x = as_tensor(batch)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # sync only if CUDA is in use
    for _ in range(warmup):
        runner(x)
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner(x)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = np.asarray(times) * 1000.0
    n = int(len(x))
    return {
        "batch_size": n,
        "iters": iters,
        "p50_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "mean_ms": float(t.mean()),
        "images_per_s": float(n / (t.mean() / 1000.0)),
    }


def latency_report(reference: Callable, exported: Callable, batch, batch_n: int = 32,
                   iters: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Eager vs exported at batch 1 and batch N; the sample batch is tiled up to N images."""
    x = as_tensor(batch)
    reps = -(-batch_n // len(x))
    xn = x.repeat(reps, 1, 1, 1)[:batch_n]
    report: dict[str, Any] = {}
    for key, xb in (("batch_1", x[:1]), ("batch_n", xn)):
        ref = measure_latency(reference, xb, iters, warmup)
        exp = measure_latency(exported, xb, iters, warmup)
        report[key] = {
            "pytorch": ref,
            "exported": exp,
            "throughput_ratio": exp["images_per_s"] / ref["images_per_s"],
        }
    report["batch_n_size"] = batch_n
    return report
