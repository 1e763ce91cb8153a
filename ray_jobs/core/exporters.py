"""Model export without Ray: ONNX, TorchScript and TensorRT, checked against PyTorch.

The export job (Ray) calls these functions in order: ``export_*`` -> ``parity_check`` ->
``latency_report`` -> ``write_bundle``. Every returned dict is plain JSON.

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
- TensorRT is imported lazily; this module imports and works (minus TensorRT) without it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import string
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ExportError",
    "DetectionExportWrapper",
    "export_onnx",
    "export_torchscript",
    "tensorrt_available",
    "export_tensorrt",
    "PyTorchRunner",
    "OnnxRunner",
    "TorchScriptRunner",
    "TensorRTRunner",
    "load_runner",
    "parity_check",
    "measure_latency",
    "latency_report",
    "preprocess_image",
    "write_bundle",
]

TASKS = ("classification", "detection")
FORMATS = ("onnx", "torchscript", "tensorrt")
PRECISIONS = ("fp32", "fp16")
LEGACY_OPSET = 17
MODEL_FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "tensorrt": "model.engine"}
TEMPLATES = Path(__file__).with_name("bundle_templates")
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


def _check(task: str, fmt: str | None = None, precision: str | None = None) -> None:
    if task not in TASKS:
        raise ExportError(f"Invalid task {task!r}. Only {', '.join(TASKS)} are supported.")
    if fmt is not None and fmt not in FORMATS:
        raise ExportError(f"Invalid format {fmt!r}. Only {', '.join(FORMATS)} are supported.")
    if precision is not None and precision not in PRECISIONS:
        raise ExportError(f"Invalid precision {precision!r}. Only {', '.join(PRECISIONS)} are supported.")


def _image_hw(preprocess: dict) -> tuple[int, int]:
    size = preprocess["image_size"]
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """Export from a CPU fp32 copy so the caller's (maybe CUDA, maybe training) model is untouched."""
    return copy.deepcopy(model).float().cpu().eval()


# --------------------------------------------------------------------------- wrappers


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


class _NamedInput(nn.Module):
    """Gives the classifier's argument a stable name (``images``) for ``dynamic_shapes``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


# --------------------------------------------------------------------------- ONNX


def _onnx_graph_info(path: str | os.PathLike) -> dict[str, Any]:
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
    """Write a single self-contained ``.onnx`` file and describe it (see module docstring)."""
    _check(task, "onnx", precision)
    if precision != "fp32":
        raise ExportError(
            "ONNX exports are fp32 only; choose format 'tensorrt' with precision 'fp16' "
            "(TensorRT builds fp16 kernels from the fp32 ONNX)."
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = _image_hw(preprocess)
    net = _cpu_eval_copy(model)
    notes: list[str] = []
    fallback_reason = None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter, not actionable for users
        if task == "classification":
            wrapped = _NamedInput(net)
            example = torch.rand(2 if dynamic_batch else 1, 3, h, w)
            try:
                torch.onnx.export(
                    wrapped, (example,), str(out_path), dynamo=True, external_data=False,
                    input_names=["images"], output_names=["logits"], opset_version=opset,
                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}} if dynamic_batch else None,
                    verbose=False,
                )
                exporter = "dynamo"
            except Exception as exc:  # noqa: BLE001 - any dynamo failure falls back, with the reason kept
                fallback_reason = f"{type(exc).__name__}: {exc}"[:1000]
                notes.append("dynamo exporter failed; exported with the legacy exporter")
                _legacy_export(
                    wrapped, example, out_path, opset, ["logits"],
                    {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                )
                exporter = "legacy"
            batch_fixed = not dynamic_batch
        else:
            wrapped = DetectionExportWrapper(net, label_offset)
            example = torch.rand(1, 3, h, w)
            _legacy_export(
                wrapped, example, out_path, opset, ["boxes", "scores", "labels"],
                {
                    "images": {2: "height", 3: "width"},
                    "boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"},
                },
            )
            exporter = "legacy"
            batch_fixed = True
            notes.append(BATCH_FIXED_NOTE)
    graph = _onnx_graph_info(out_path)
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
        "file": out_path.name,
        "file_size_bytes": out_path.stat().st_size,
        "export_seconds": round(time.perf_counter() - t0, 3),
        "torch_version": torch.__version__,
        "notes": notes,
    }
    if task == "detection":
        info["label_offset"] = label_offset
    return info


def _legacy_export(module, example, out_path, opset, output_names, dynamic_axes) -> None:
    torch.onnx.export(
        module, (example,), str(out_path), dynamo=False, opset_version=opset or LEGACY_OPSET,
        input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes,
        do_constant_folding=True, verbose=False,
    )


# --------------------------------------------------------------------------- TorchScript


def export_torchscript(
    model: nn.Module,
    task: str,
    preprocess: dict,
    out_path: str | os.PathLike,
    precision: str = "fp32",
    label_offset: int = 1,
) -> dict[str, Any]:
    """Trace classifiers, script detectors (wrapper above); trace is the detector fallback.

    Tracing a detector freezes the control flow seen on the example image, hence script first.
    """
    _check(task, "torchscript", precision)
    if precision != "fp32":
        raise ExportError("TorchScript exports are fp32 only; use format 'tensorrt' for fp16.")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = _image_hw(preprocess)
    net = _cpu_eval_copy(model)
    notes: list[str] = []
    fallback_reason = None
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still works here
        if task == "classification":
            module = torch.jit.trace(net, torch.rand(2, 3, h, w), check_trace=False)
            method = "trace"
        else:
            wrapped = DetectionExportWrapper(net, label_offset)
            try:
                module = torch.jit.script(wrapped)
                method = "script"
            except Exception as exc:  # noqa: BLE001
                fallback_reason = f"{type(exc).__name__}: {exc}"[:1000]
                module = torch.jit.trace(wrapped, torch.rand(1, 3, h, w), check_trace=False)
                method = "trace"
                notes.append("scripting failed; traced (control flow fixed to the example image)")
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
        "inputs": [{"name": "images", "shape": ["batch" if task == "classification" else 1, 3, h, w], "dtype": "float"}],
        "outputs": (
            [{"name": "logits", "shape": ["batch", "num_classes"], "dtype": "float"}]
            if task == "classification"
            else [
                {"name": "boxes", "shape": ["detections", 4], "dtype": "float"},
                {"name": "scores", "shape": ["detections"], "dtype": "float"},
                {"name": "labels", "shape": ["detections"], "dtype": "int64"},
            ]
        ),
        "image_size": [h, w],
        "file": out_path.name,
        "file_size_bytes": out_path.stat().st_size,
        "export_seconds": round(time.perf_counter() - t0, 3),
        "torch_version": torch.__version__,
        "notes": notes,
    }
    if task == "detection":
        info["label_offset"] = label_offset
    return info


# --------------------------------------------------------------------------- TensorRT


def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, GPU hosts only ([gpu] extra)
    except Exception as exc:  # noqa: BLE001 - the PyPI stub raises odd errors when incomplete
        raise ExportError(f"TensorRT is not installed: {type(exc).__name__}: {exc}") from exc
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason) for the API's UNAVAILABLE envelope; never raises."""
    try:
        trt = _import_tensorrt()
    except ExportError as exc:
        return False, f"{exc} (install the [gpu] extra on an NVIDIA GPU host)"
    try:
        if not torch.cuda.is_available():
            return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible to PyTorch."
        name = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001
        return False, f"CUDA check failed: {type(exc).__name__}: {exc}"
    return True, f"TensorRT {trt.__version__} on {name}"


def _gpu_facts() -> dict[str, Any]:
    major, minor = torch.cuda.get_device_capability(0)
    facts: dict[str, Any] = {
        "gpu_name": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "cuda_version": torch.version.cuda,  # the CUDA runtime torch (and our buffers) use
        "driver_version": None,
    }
    try:
        import pynvml  # nvidia-ml-py, a base dependency

        pynvml.nvmlInit()
        facts["driver_version"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - informative only
        pass
    return facts


def export_tensorrt(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str = "fp32",
    max_batch: int = 32,
    opt_batch: int | None = None,
    min_batch: int = 1,
    image_size: int | Sequence[int] | None = None,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build a serialized engine from an ONNX file (TensorRT 10 Python API) plus a sidecar JSON.

    One optimization profile: dynamic batch dims get ``min/opt/max`` batch; other dynamic dims
    (detection H/W) are pinned to ``image_size``, the size the bundle's preprocessing produces.
    fp16 uses ``BuilderFlag.FP16`` (TensorRT 10). TensorRT 11 removed that flag ("weak
    typing"); there we refuse fp16 with the migration hint instead of building fp32 silently.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"Invalid precision {precision!r}. Only {', '.join(PRECISIONS)} are supported.")
    ok, reason = tensorrt_available()
    if not ok:
        raise ExportError(reason)
    trt = _import_tensorrt()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    opt_batch = min(opt_batch or max_batch, max_batch)
    t0 = time.perf_counter()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (removed in TensorRT 11); "
                "install TensorRT 10.x (tensorrt-cu12>=10,<11) for fp16, or build fp32."
            )
        config.set_flag(trt.BuilderFlag.FP16)

    if image_size is None:
        hw = None
    elif isinstance(image_size, (list, tuple)):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        hw = (int(image_size), int(image_size))
    profile = builder.create_optimization_profile()
    profile_shapes, dynamic = {}, False
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = list(inp.shape)
        lo, mid, hi = list(dims), list(dims), list(dims)
        for axis, d in enumerate(dims):
            if d >= 0:
                continue
            dynamic = True
            if axis == 0:
                lo[axis], mid[axis], hi[axis] = min_batch, opt_batch, max_batch
            elif hw is not None and axis in (2, 3):
                lo[axis] = mid[axis] = hi[axis] = hw[axis - 2]
            else:
                raise ExportError(f"input {inp.name} axis {axis} is dynamic; pass image_size to pin it")
        profile.set_shape(inp.name, lo, mid, hi)
        profile_shapes[inp.name] = {"min": lo, "opt": mid, "max": hi}
    if dynamic:  # static networks need no profile
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see the job log for TensorRT's messages)")
    out_path.write_bytes(bytes(serialized))

    sidecar = {
        "tensorrt_version": trt.__version__,
        **_gpu_facts(),
        "precision": precision,
        "profiles": profile_shapes,
        "onnx_file": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "note": TENSORRT_NOTE,
    }
    sidecar_path = out_path.with_name(out_path.name + ".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    graph = _onnx_graph_info(onnx_path)
    return {
        "format": "tensorrt",
        "precision": precision,
        "opset": graph["opset"],
        "input_names": [i["name"] for i in graph["inputs"]],
        "output_names": [o["name"] for o in graph["outputs"]],
        "file": out_path.name,
        "file_size_bytes": out_path.stat().st_size,
        "sidecar": sidecar_path.name,
        "tensorrt": sidecar,
        "max_batch": max_batch,
        "dynamic_batch": any(s["min"][0] != s["max"][0] for s in profile_shapes.values()),
        "batch_fixed": all(s["max"][0] == 1 for s in profile_shapes.values()),
        "export_seconds": round(time.perf_counter() - t0, 3),
        "notes": [TENSORRT_NOTE],
    }


def _trt_torch_dtype(trt, dt) -> torch.dtype:
    table = {
        "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
        "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
    }
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return tdt
    raise ExportError(f"unsupported TensorRT tensor type {dt}")


def _output_allocator(trt, device: torch.device):
    """An IOutputAllocator backed by torch CUDA memory, for outputs whose size is only known
    while running (NMS results)."""

    class _TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.numel() < size:
                buf = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = buf
            return buf.data_ptr()

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self.reallocate_output_async(tensor_name, memory, size, alignment, None)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return _TorchOutputAllocator()


# --------------------------------------------------------------------------- runners
#
# Every runner takes a float (N, 3, H, W) batch (torch tensor or numpy, already preprocessed)
# and returns, for classification, numpy logits (N, C); for detection, a list of per-image
# dicts {"boxes": (n, 4), "scores": (n,), "labels": (n,)} with 0-based class labels.


def _to_numpy_dets(boxes, scores, labels) -> dict[str, np.ndarray]:
    conv = lambda t: t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)  # noqa: E731
    return {
        "boxes": conv(boxes).astype(np.float32).reshape(-1, 4),
        "scores": conv(scores).astype(np.float32).reshape(-1),
        "labels": conv(labels).astype(np.int64).reshape(-1),
    }


def _as_tensor(batch) -> Tensor:
    return batch if isinstance(batch, Tensor) else torch.from_numpy(np.ascontiguousarray(batch))


class PyTorchRunner:
    """Eager PyTorch reference with the same inputs/outputs as the exported runtimes."""

    def __init__(self, model: nn.Module, task: str, device: str | torch.device = "cpu",
                 label_offset: int = 1, half: bool = False):
        _check(task)
        self.task, self.device, self.half, self.label_offset = task, torch.device(device), half, label_offset
        self.model = model.to(self.device).eval()
        if half:
            self.model = self.model.half()

    @torch.no_grad()
    def __call__(self, batch):
        x = _as_tensor(batch).to(self.device, torch.float16 if self.half else torch.float32)
        if self.task == "classification":
            return self.model(x).float().cpu().numpy()
        outs = self.model(list(x.unbind(0)))
        return [_to_numpy_dets(o["boxes"], o["scores"], o["labels"] - self.label_offset) for o in outs]


class OnnxRunner:
    """onnxruntime session; loops image by image when the file's batch is fixed at 1."""

    def __init__(self, path: str | os.PathLike, task: str, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        _check(task)
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
        x = _as_tensor(batch).detach().cpu().float().numpy()
        if self.task == "classification":
            if self.batch_fixed:
                return np.concatenate([self._run(x[i : i + 1])[0] for i in range(len(x))])
            return self._run(x)[0]
        return [_to_numpy_dets(*self._run(x[i : i + 1])) for i in range(len(x))]


class TorchScriptRunner:
    def __init__(self, path: str | os.PathLike, task: str, device: str | torch.device = "cpu"):
        _check(task)
        self.task, self.device = task, torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, batch):
        x = _as_tensor(batch).to(self.device, torch.float32)
        if self.task == "classification":
            return self.module(x).float().cpu().numpy()
        return [_to_numpy_dets(*self.module(x[i : i + 1])) for i in range(len(x))]


class TensorRTRunner:
    """Runs a serialized engine with torch CUDA tensors as I/O buffers (no pycuda).

    ``execute_async_v3`` on torch's current stream; fixed-shape outputs are preallocated,
    data-dependent ones (NMS) come back through an output allocator.
    """

    def __init__(self, engine_path: str | os.PathLike, task: str, device: int = 0):
        _check(task)
        trt = _import_tensorrt()
        self.trt, self.task = trt, task
        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ExportError(f"could not load {Path(engine_path).name}: {TENSORRT_NOTE}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self.input_name = next(n for n in names if is_input(n))
        self.output_names = [n for n in names if not is_input(n)]
        self.dtypes = {n: _trt_torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        if self.engine.num_optimization_profiles:
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        else:
            self.max_batch = int(self.engine.get_tensor_shape(self.input_name)[0])
        self.allocator = _output_allocator(trt, self.device)
        self.stream = torch.cuda.Stream(self.device)  # TensorRT warns about the default stream

    def infer(self, x: Tensor) -> dict[str, Tensor]:
        """One execution; returns CUDA tensors keyed by output name."""
        ctx = self.context
        x = x.to(self.device, self.dtypes[self.input_name]).contiguous()
        ctx.set_input_shape(self.input_name, tuple(x.shape))
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        outputs, dynamic = {}, []
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                ctx.set_output_allocator(name, self.allocator)
                dynamic.append(name)
            else:
                out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                ctx.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x and outputs are ready
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        self.stream.synchronize()
        for name in dynamic:
            shape = self.allocator.shapes[name]
            dtype = self.dtypes[name]
            nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            outputs[name] = self.allocator.buffers[name][:nbytes].view(dtype).reshape(shape).clone()
        return outputs

    def __call__(self, batch):
        x = _as_tensor(batch)
        if self.task == "classification":
            chunks = [self.infer(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
            return torch.cat([c[self.output_names[0]] for c in chunks]).float().cpu().numpy()
        results = []
        for i in range(len(x)):
            out = self.infer(x[i : i + 1])
            results.append(_to_numpy_dets(out["boxes"], out["scores"], out["labels"]))
        return results


def load_runner(path: str | os.PathLike, fmt: str, task: str, device: str = "cpu") -> Callable:
    """The runner for an exported file (onnxruntime uses the CPU provider unless device is cuda)."""
    _check(task, fmt)
    if fmt == "onnx":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else None
        return OnnxRunner(path, task, providers)
    if fmt == "torchscript":
        return TorchScriptRunner(path, task, device)
    return TensorRTRunner(path, task)


# --------------------------------------------------------------------------- parity


DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}  # max abs logit difference


def _match_detection_sets(ref: dict, got: dict, top_k: int, iou_min: float, min_score: float = 0.0):
    """Greedy match of ref's top-k (by score, at least ``min_score``) to any of got's boxes with
    the same label, closest in box and score first.

    Matching against all of ``got`` (not its top-k) keeps near-tied scores at the k-th place
    from counting as misses; ``min_score`` leaves out the near-zero candidates an undertrained
    detector emits, which appear or vanish at the model's own score cut-off by rounding alone;
    choosing the candidate closest in (1 - IoU) + |score difference| keeps near-duplicate
    boxes from stealing each other's partner.
    """
    from .metrics import box_iou

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
    _check(task, fmt, precision)
    batch = _as_tensor(sample_batch).float()
    ref_runner = PyTorchRunner(_cpu_eval_copy(model), task, device=device, label_offset=label_offset)
    runner = load_runner(exported_path, fmt, task, device=device)
    if task == "classification":
        tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[precision]
        ref1, got1 = ref_runner(batch[:1]), runner(batch[:1])
        refn, gotn = ref_runner(batch), runner(batch)
        d1 = float(np.abs(ref1 - got1).max())
        dn = float(np.abs(refn - gotn).max())
        return {
            "format": fmt,
            "task": task,
            "batch_sizes": [1, int(len(batch))],
            "max_abs_diff": max(d1, dn),
            "max_abs_diff_batch1": d1,
            "max_abs_diff_batchN": dn,
            "mean_abs_diff": float(np.abs(refn - gotn).mean()),
            "top1_agreement": float((refn.argmax(1) == gotn.argmax(1)).mean()),
            "tolerance": tol,
            "passed": max(d1, dn) <= tol,
        }
    tol = tolerance if tolerance is not None else {"fp32": 1e-3, "fp16": 5e-2}[precision]
    refs, gots = ref_runner(batch), runner(batch)
    total, box_diffs, score_diffs = 0, [], []
    for ref, got in zip(refs, gots):
        n, b, s = _match_detection_sets(ref, got, top_k, iou_min, min_score)
        total += n
        box_diffs += b
        score_diffs += s
    rate = len(box_diffs) / total if total else 1.0
    max_score = max(score_diffs, default=0.0)
    return {
        "format": fmt,
        "task": task,
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


# --------------------------------------------------------------------------- latency


def measure_latency(runner: Callable, batch, iters: int = 20, warmup: int = 3) -> dict[str, float]:
    """Wall time of ``runner(batch)`` from a host batch to host outputs (what a caller sees)."""
    x = _as_tensor(batch)
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
    x = _as_tensor(batch)
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


# --------------------------------------------------------------------------- bundle


def preprocess_image(image, preprocess: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """PIL image or path -> ((1, 3, H, W) float32, original (width, height)).

    The exact steps of the bundle's predict.py (PIL bilinear stretch, scale, mean/std), so
    the appliance and the bundle see the same tensor.
    """
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.open(image)
    img = img.convert("RGB")
    size = img.size
    h, w = _image_hw(preprocess)
    img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * float(preprocess.get("scale", 1 / 255))
    x = (x - np.asarray(preprocess["mean"], np.float32)) / np.asarray(preprocess["std"], np.float32)
    if preprocess.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32), size


def _fmt_float(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def _readme(task, fmt, class_names, preprocess, info) -> str:
    parity = info.get("parity") or {}
    if not parity:
        parity_text = "not measured"
    elif task == "classification":
        parity_text = (
            f"max abs logit difference {_fmt_float(parity.get('max_abs_diff'))} at batch sizes "
            f"{parity.get('batch_sizes')} (tolerance {parity.get('tolerance')}): "
            f"{'passed' if parity.get('passed') else 'FAILED'}; top-1 agreement "
            f"{_fmt_float(parity.get('top1_agreement'))}"
        )
    else:
        parity_text = (
            f"top-{parity.get('top_k')} detections matched {parity.get('num_matched')}/"
            f"{parity.get('num_reference')} (rate {_fmt_float(parity.get('match_rate'))}), "
            f"max box diff {_fmt_float(parity.get('max_box_diff'))} px, max score diff "
            f"{_fmt_float(parity.get('max_score_diff'))}: {'passed' if parity.get('passed') else 'FAILED'}"
        )
    lat = info.get("latency") or {}
    rows = []
    for key in ("batch_1", "batch_n"):
        if key in lat:
            r = lat[key]
            rows.append(
                f"| {r['pytorch']['batch_size']} | {r['pytorch']['p50_ms']:.2f} | {r['exported']['p50_ms']:.2f} "
                f"| {r['pytorch']['images_per_s']:.1f} | {r['exported']['images_per_s']:.1f} "
                f"| {r['throughput_ratio']:.2f}x |"
            )
    latency_table = (
        "| batch | PyTorch p50 ms | exported p50 ms | PyTorch img/s | exported img/s | ratio |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
        if rows else "not measured"
    )
    notes = list(info.get("notes") or [])
    if fmt == "tensorrt" and TENSORRT_NOTE not in notes:
        notes.append(TENSORRT_NOTE)
    details = [
        f"- exporter: {info.get('exporter') or info.get('method') or 'TensorRT builder'}",
        f"- opset: {info.get('opset', 'n/a')}",
        f"- precision: {info.get('precision', 'fp32')}",
        f"- batch: {'fixed at 1' if info.get('batch_fixed') else 'dynamic'}",
    ]
    if info.get("tensorrt"):
        t = info["tensorrt"]
        details.append(
            f"- built with TensorRT {t.get('tensorrt_version')} / CUDA {t.get('cuda_version')} on "
            f"{t.get('gpu_name')} (compute capability {t.get('compute_capability')})"
        )
    if info.get("metric_delta") is not None:
        details.append(f"- evaluation metric, exported minus PyTorch: {info['metric_delta']}")
    template = string.Template((TEMPLATES / "README.md.tmpl").read_text())
    return template.substitute(
        task=task,
        fmt=fmt,
        model_file=MODEL_FILENAMES[fmt],
        num_classes=len(class_names),
        classes=", ".join(map(str, class_names[:20])) + (" ..." if len(class_names) > 20 else ""),
        requirements=_REQUIREMENTS[fmt],
        image_size="{} x {}".format(*_image_hw(preprocess)),
        details="\n".join(details),
        parity=parity_text,
        latency=latency_table,
        notes="\n".join(f"- {n}" for n in notes) or "- none",
        output=_OUTPUT_DOC[task],
    )


_REQUIREMENTS = {
    "onnx": "pip install numpy pillow onnxruntime",
    "torchscript": "pip install numpy pillow torch torchvision  # torchvision: detection models only",
    "tensorrt": "pip install numpy pillow torch tensorrt  # same TensorRT version as in the details above",
}
_OUTPUT_DOC = {
    "classification": '{"label": "cat", "index": 0, "score": 0.93, "top": [...]}',
    "detection": '{"boxes": [[x1, y1, x2, y2], ...], "labels": [0, ...], "label_names": ["cat", ...], '
                 '"scores": [0.9, ...]}  (boxes in original image pixels)',
}


def write_bundle(
    out_zip: str | os.PathLike,
    model_file: str | os.PathLike,
    class_names: Sequence[str],
    preprocess: dict,
    task: str,
    info: dict,
    fmt: str,
) -> dict[str, Any]:
    """ZIP: model file, labels.json, preprocess.json, export.json, predict.py, README.md.

    ``info`` is the export dict, optionally with ``parity`` / ``latency`` / ``metric_delta``
    added by the job; it is stored as export.json and summarised in the README. A TensorRT
    bundle also carries the engine's sidecar JSON (versions, GPU).
    """
    _check(task, fmt)
    out_zip, model_file = Path(out_zip), Path(model_file)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    export_meta = {
        **info,
        "task": task,
        "format": fmt,
        "model_file": MODEL_FILENAMES[fmt],
        "score_threshold": info.get("score_threshold", 0.25),
    }
    files = {
        "labels.json": json.dumps([str(c) for c in class_names], indent=2),
        "preprocess.json": json.dumps(preprocess, indent=2),
        "export.json": json.dumps(export_meta, indent=2, default=str),
        "predict.py": (TEMPLATES / f"predict_{fmt}.py").read_text(),
        "README.md": _readme(task, fmt, list(class_names), preprocess, info),
    }
    if fmt == "tensorrt" and info.get("tensorrt"):
        files["engine.json"] = json.dumps(info["tensorrt"], indent=2)
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(model_file, MODEL_FILENAMES[fmt])
        for name, text in files.items():
            zf.writestr(name, text)
    return {
        "path": str(out_zip),
        "entries": [MODEL_FILENAMES[fmt], *files],
        "size_bytes": out_zip.stat().st_size,
    }
