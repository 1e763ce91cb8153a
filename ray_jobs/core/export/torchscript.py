"""TorchScript: trace classifiers, script detectors (trace as the fallback), and its runner."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import (
    file_facts,
    BATCH_FIXED_NOTE,
    DetectionExportWrapper,
    ExportError,
    as_tensor,
    check_precision,
    check_task,
    cpu_eval_copy,
    image_hw,
    to_numpy_dets,
)

MODEL_FILE = "model.pt"


def _io_description(task: str, h: int, w: int) -> dict[str, list[dict]]:
    inputs = [{"name": "images", "shape": ["batch" if task == "classification" else 1, 3, h, w], "dtype": "float"}]
    if task == "classification":
        outputs = [{"name": "logits", "shape": ["batch", "num_classes"], "dtype": "float"}]
    else:
        outputs = [
            {"name": "boxes", "shape": ["detections", 4], "dtype": "float"},
            {"name": "scores", "shape": ["detections"], "dtype": "float"},
            {"name": "labels", "shape": ["detections"], "dtype": "int64"},
        ]
    return {"inputs": inputs, "outputs": outputs}


def _script_detector(net, h, w, label_offset, notes):
    """Script the wrapper; trace it if scripting fails. Returns (module, method, fallback_reason)."""
    wrapped = DetectionExportWrapper(net, label_offset)
    try:
        return torch.jit.script(wrapped), "script", None
    except Exception as exc:  # noqa: BLE001
        fallback_reason = f"{type(exc).__name__}: {exc}"[:1000]
        module = torch.jit.trace(wrapped, torch.rand(1, 3, h, w), check_trace=False)
        notes.append("scripting failed; traced (control flow fixed to the example image)")
        return module, "trace", fallback_reason


def export_torchscript(
    model: nn.Module,
    task: str,
    preprocess: dict,
    out_path: str | os.PathLike,
    precision: str = "fp32",
    label_offset: int = 1,
) -> dict[str, Any]:
    """Trace classifiers, script detectors (wrapper in common.py); trace is the detector fallback.

    Tracing a detector freezes the control flow seen on the example image, hence script first.
    """
    check_task(task)
    check_precision(precision)
    if precision != "fp32":
        raise ExportError("TorchScript exports are fp32 only; use format 'tensorrt' for fp16.")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = image_hw(preprocess)
    net = cpu_eval_copy(model)
    notes: list[str] = []
    fallback_reason = None
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still works here
        if task == "classification":
            module = torch.jit.trace(net, torch.rand(2, 3, h, w), check_trace=False)
            method = "trace"
        else:
            module, method, fallback_reason = _script_detector(net, h, w, label_offset, notes)
            notes.append(BATCH_FIXED_NOTE)
        module.save(str(out_path))
    info = {
        "format": "torchscript",
        "task": task,
        "precision": "fp32",
        "method": method,
        "fallback_reason": fallback_reason,
        "dynamic_batch": task == "classification",
        "batch_fixed": task == "detection",
        **_io_description(task, h, w),
        "image_size": [h, w],
        **file_facts(out_path, t0, notes, task, label_offset),
    }
    return info


class TorchScriptRunner:
    def __init__(self, path: str | os.PathLike, task: str, device: str | torch.device = "cpu"):
        check_task(task)
        self.task, self.device = task, torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, batch):
        x = as_tensor(batch).to(self.device, torch.float32)
        if self.task == "classification":
            return self.module(x).float().cpu().numpy()
        return [to_numpy_dets(*self.module(x[i : i + 1])) for i in range(len(x))]


def build(model: nn.Module, task: str, preprocess: dict, out_dir: Path, *, precision: str = "fp32",
          dynamic_batch: bool = True, opset: int | None = None, image_size=None) -> tuple[Path, dict]:
    """The export job's step: ``model.pt`` in ``out_dir`` (fp32; batch and opset are ONNX options)."""
    path = Path(out_dir) / MODEL_FILE
    return path, export_torchscript(model, task, preprocess, path)


def load_runner(path: str | os.PathLike, task: str, device: str = "cpu") -> TorchScriptRunner:
    return TorchScriptRunner(path, task, device)
