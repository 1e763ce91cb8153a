"""What every export format shares: errors, checks, the detection wrapper, input/output plumbing."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from ray_jobs.prediction import image_hw  # noqa: F401  (re-exported: one definition)

TASKS = ("classification", "detection")
PRECISIONS = ("fp32", "fp16")
BATCH_FIXED_NOTE = (
    "Detection models export with batch size fixed at 1 (post-processing/NMS is inside the "
    "graph and each image yields a different number of boxes); run images one at a time."
)
TENSORRT_NOTE = (
    "TensorRT engines only load on the GPU model (compute capability) and TensorRT version "
    "where they were built; rebuild from the ONNX file for any other host."
)


class ExportError(RuntimeError):
    """An export that cannot be done here, with a reason the UI can show as is."""


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ExportError(f"Invalid task {task!r}. Only {', '.join(TASKS)} are supported.")


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ExportError(f"Invalid precision {precision!r}. Only {', '.join(PRECISIONS)} are supported.")


def file_facts(out_path, started: float, notes: list[str], task: str, label_offset: int) -> dict:
    """The part of an export's description every format shares: the written file, how long the
    export took, the torch that made it, notes, and (detection) the label offset."""
    import time

    facts = {
        "file": out_path.name,
        "file_size_bytes": out_path.stat().st_size,
        "export_seconds": round(time.perf_counter() - started, 3),
        "torch_version": torch.__version__,
        "notes": notes,
    }
    if task == "detection":
        facts["label_offset"] = label_offset
    return facts


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """Export from a CPU fp32 copy so the caller's (maybe CUDA, maybe training) model is untouched."""
    return copy.deepcopy(model).float().cpu().eval()


def preprocess_image(image, preprocess: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """PIL image or path -> ((1, 3, H, W) float32, original (width, height)).

    The one implementation (`ray_jobs/prediction.py`) that the bundle's predict.py ships and the
    endpoints import, so the appliance, the bundle and an endpoint see the same tensor.
    """
    from ray_jobs.prediction import preprocess as shared_preprocess

    return shared_preprocess(image, preprocess)


class DetectionExportWrapper(nn.Module):
    """``(N, 3, H, W)`` float in [0, 1] -> ``boxes, scores, labels`` of image 0.

    Post-processing (score filter, NMS, top-k) stays inside the torchvision model, so exported
    files give final detections in input-tensor pixels. Scriptable and traceable.
    """

    def __init__(self, model: nn.Module, label_offset: int = 1):
        super().__init__()
        self.model = model
        self.label_offset = label_offset

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        imgs = list(images.unbind(0))
        if torch.jit.is_scripting():
            dets = self.model(imgs)[1]  # scripted torchvision detectors return (losses, detections)
        else:
            dets = self.model(imgs)
        d = dets[0]
        return d["boxes"], d["scores"], d["labels"] - self.label_offset


# Every runner takes a float (N, 3, H, W) batch (torch tensor or numpy, already preprocessed)
# and returns, for classification, numpy logits (N, C); for detection, a list of per-image
# dicts {"boxes": (n, 4), "scores": (n,), "labels": (n,)} with 0-based class labels.


def to_numpy_dets(boxes, scores, labels) -> dict[str, np.ndarray]:
    conv = lambda t: t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)  # noqa: E731
    return {
        "boxes": conv(boxes).astype(np.float32).reshape(-1, 4),
        "scores": conv(scores).astype(np.float32).reshape(-1),
        "labels": conv(labels).astype(np.int64).reshape(-1),
    }


def as_tensor(batch) -> Tensor:
    return batch if isinstance(batch, Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
