"""ONNX: the exporter (dynamo for classifiers with a legacy fallback, legacy for detectors) and
the onnxruntime runner."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

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

MODEL_FILE = "model.onnx"
LEGACY_OPSET = 17


class _NamedInput(nn.Module):
    """Gives the classifier's argument a stable name (``images``) for ``dynamic_shapes``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def onnx_graph_info(path: str | os.PathLike) -> dict[str, Any]:
    """Opset and the named, shaped inputs/outputs of an ONNX file."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def _desc(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower()})
        return out

    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "inputs": _desc(m.graph.input), "outputs": _desc(m.graph.output)}


def _legacy_export(module, example, out_path, opset, output_names, dynamic_axes) -> None:
    torch.onnx.export(
        module, (example,), str(out_path), dynamo=False, opset_version=opset or LEGACY_OPSET,
        input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes,
        do_constant_folding=True, verbose=False,
    )


def _export_classifier(net, h, w, out_path, dynamic_batch, opset, notes) -> tuple[str, str | None]:
    """Dynamo first, legacy on failure; returns (exporter, fallback_reason)."""
    wrapped = _NamedInput(net)
    example = torch.rand(2 if dynamic_batch else 1, 3, h, w)
    try:
        torch.onnx.export(
            wrapped, (example,), str(out_path), dynamo=True, external_data=False,
            input_names=["images"], output_names=["logits"], opset_version=opset,
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}} if dynamic_batch else None,
            verbose=False,
        )
        return "dynamo", None
    except Exception as exc:  # noqa: BLE001 - any dynamo failure falls back, with the reason kept
        fallback_reason = f"{type(exc).__name__}: {exc}"[:1000]
        notes.append("dynamo exporter failed; exported with the legacy exporter")
        _legacy_export(
            wrapped, example, out_path, opset, ["logits"],
            {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        )
        return "legacy", fallback_reason


def _export_detector(net, h, w, out_path, opset, label_offset) -> None:
    wrapped = DetectionExportWrapper(net, label_offset)
    example = torch.rand(1, 3, h, w)
    _legacy_export(
        wrapped, example, out_path, opset, ["boxes", "scores", "labels"],
        {
            "images": {2: "height", 3: "width"},
            "boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"},
        },
    )


def export_onnx(
    model: nn.Module,
    task: str,
    preprocess: dict,
    out_path: str | os.PathLike,
    dynamic_batch: bool = True,
    opset: int | None = None,
    precision: str = "fp32",
    label_offset: int = 1,
) -> dict[str, Any]:
    """Write a single self-contained ``.onnx`` file and describe it (see the package docstring)."""
    check_task(task)
    check_precision(precision)
    if precision != "fp32":
        raise ExportError(
            "ONNX exports are fp32 only; choose format 'tensorrt' with precision 'fp16' "
            "(TensorRT builds fp16 kernels from the fp32 ONNX)."
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = image_hw(preprocess)
    net = cpu_eval_copy(model)
    notes: list[str] = []
    fallback_reason = None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter, not actionable for users
        if task == "classification":
            exporter, fallback_reason = _export_classifier(net, h, w, out_path, dynamic_batch, opset, notes)
            batch_fixed = not dynamic_batch
        else:
            _export_detector(net, h, w, out_path, opset, label_offset)
            exporter = "legacy"
            batch_fixed = True
            notes.append(BATCH_FIXED_NOTE)
    graph = onnx_graph_info(out_path)
    info = {
        "format": "onnx",
        "task": task,
        "precision": "fp32",
        "exporter": exporter,
        "fallback_reason": fallback_reason,
        "opset": graph["opset"],
        "dynamic_batch": not batch_fixed,
        "batch_fixed": batch_fixed,
        "inputs": graph["inputs"],
        "outputs": graph["outputs"],
        "input_names": [i["name"] for i in graph["inputs"]],
        "output_names": [o["name"] for o in graph["outputs"]],
        "image_size": [h, w],
        **file_facts(out_path, t0, notes, task, label_offset),
    }
    return info


class OnnxRunner:
    """onnxruntime session; loops image by image when the file's batch is fixed at 1."""

    def __init__(self, path: str | os.PathLike, task: str, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        check_task(task)
        self.task = task
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch_fixed = isinstance(inp.shape[0], int)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, x: np.ndarray):
        return self.session.run(self.output_names, {self.input_name: x})

    def __call__(self, batch):
        x = as_tensor(batch).detach().cpu().float().numpy()
        if self.task == "classification":
            if self.batch_fixed:
                return np.concatenate([self._run(x[i : i + 1])[0] for i in range(len(x))])
            return self._run(x)[0]
        return [to_numpy_dets(*self._run(x[i : i + 1])) for i in range(len(x))]


def build(model: nn.Module, task: str, preprocess: dict, out_dir: Path, *, precision: str = "fp32",
          dynamic_batch: bool = True, opset: int | None = None, image_size=None) -> tuple[Path, dict]:
    """The export job's step: ``model.onnx`` in ``out_dir`` (the requested precision is TensorRT's)."""
    path = Path(out_dir) / MODEL_FILE
    return path, export_onnx(model, task, preprocess, path, dynamic_batch=dynamic_batch, opset=opset)


def load_runner(path: str | os.PathLike, task: str, device: str = "cpu") -> OnnxRunner:
    """onnxruntime with the CPU provider unless device is cuda."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else None
    return OnnxRunner(path, task, providers)
