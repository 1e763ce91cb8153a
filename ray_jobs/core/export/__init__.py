"""Model export without Ray: ONNX, TorchScript and TensorRT, checked against PyTorch.

The export job (Ray) calls, in order: ``export_model`` (the format's exporter, from the
``FORMATS`` registry) -> ``parity_check`` -> ``latency_report`` / ``runtime_metric`` ->
``write_bundle``. Every returned dict is plain JSON.

Modules: ``common`` (errors, checks, the detection wrapper), one module per format (``onnx``,
``torchscript``, ``tensorrt``: exporter + runner + ``build``/``load_runner``), ``formats`` (the
registry), ``verify`` (parity, metric delta, latency), ``bundle`` (the ZIP and its predict.py).

Decisions worth knowing:
- Exports are fp32. ``precision="fp16"`` is a TensorRT build option (TensorRT picks fp16
  kernels from the fp32 ONNX); ONNX and TorchScript refuse it with ``ExportError`` because
  onnxruntime CPU lacks most fp16 kernels and a half-precision file would fail its own
  parity check on the hosts that run it.
- Classification ONNX: dynamo exporter with a dynamic batch axis; on failure the legacy
  (TorchScript-based) exporter at opset 17, recorded as ``exporter`` + ``fallback_reason``.
- Detection ONNX: legacy exporter on a wrapper that takes ``(1, 3, H, W)`` float in [0, 1]
  and returns ``boxes, scores, labels`` with NMS inside. H and W are dynamic, the batch is
  fixed at 1 (``batch_fixed: true``): the dynamo exporter fails on torchvision's
  ``batched_nms`` and per-image detection counts differ, so one output tensor can't hold a
  batch.
- Detection labels: torchvision heads reserve label 0 for background, so the training core's
  model predicts ``class_index + 1``; ``label_offset`` (default 1) is subtracted inside the
  exported graph so every runtime returns 0-based project class indices.
- TensorRT is imported lazily; this package imports and works (minus TensorRT) without it.
"""

from .bundle import render_predict, write_bundle
from .common import PRECISIONS, TASKS, DetectionExportWrapper, ExportError, cpu_eval_copy, preprocess_image
from .formats import FORMATS, MODEL_FILENAMES, ExportFormat, export_model, load_runner
from .onnx import LEGACY_OPSET, OnnxRunner, export_onnx
from .tensorrt import TensorRTRunner, export_tensorrt, tensorrt_available
from .torchscript import TorchScriptRunner, export_torchscript
from .verify import (
    PyTorchRunner,
    latency_report,
    match_detection_sets,
    measure_latency,
    parity_check,
    runtime_metric,
    sample_batch,
)

__all__ = [
    "FORMATS",
    "LEGACY_OPSET",
    "MODEL_FILENAMES",
    "PRECISIONS",
    "TASKS",
    "DetectionExportWrapper",
    "ExportError",
    "ExportFormat",
    "OnnxRunner",
    "PyTorchRunner",
    "TensorRTRunner",
    "TorchScriptRunner",
    "cpu_eval_copy",
    "export_model",
    "export_onnx",
    "export_tensorrt",
    "export_torchscript",
    "latency_report",
    "load_runner",
    "match_detection_sets",
    "measure_latency",
    "parity_check",
    "preprocess_image",
    "render_predict",
    "runtime_metric",
    "sample_batch",
    "tensorrt_available",
    "write_bundle",
]
