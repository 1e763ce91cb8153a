"""TensorRT (GPU hosts only): an engine built from the ONNX export, and its runner.

TensorRT is imported lazily; this module imports and works (minus TensorRT) without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import onnx as onnx_format
from .common import PRECISIONS, TENSORRT_NOTE, ExportError, as_tensor, check_task, to_numpy_dets

MODEL_FILE = "model.engine"


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


def _optimization_profile(builder, network, min_batch, opt_batch, max_batch, image_size):
    """One profile: dynamic batch dims get min/opt/max batch, dynamic H/W are pinned to image_size.

    Returns (profile, {input: {min, opt, max}}, whether any input dim is dynamic)."""
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
    return profile, profile_shapes, dynamic


def _builder_config(trt, builder, precision: str, workspace_gib: float):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (removed in TensorRT 11); "
                "install TensorRT 10.x (tensorrt-cu12>=10,<11) for fp16, or build fp32."
            )
        config.set_flag(trt.BuilderFlag.FP16)
    return config


def _sidecar(trt, onnx_path: Path, precision: str, profile_shapes: dict) -> dict[str, Any]:
    return {
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

    config = _builder_config(trt, builder, precision, workspace_gib)
    profile, profile_shapes, dynamic = _optimization_profile(
        builder, network, min_batch, opt_batch, max_batch, image_size)
    if dynamic:  # static networks need no profile
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see the job log for TensorRT's messages)")
    out_path.write_bytes(bytes(serialized))

    sidecar = _sidecar(trt, onnx_path, precision, profile_shapes)
    sidecar_path = out_path.with_name(out_path.name + ".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    graph = onnx_format.onnx_graph_info(onnx_path)
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


class TensorRTRunner:
    """Runs a serialized engine with torch CUDA tensors as I/O buffers (no pycuda).

    ``execute_async_v3`` on torch's current stream; fixed-shape outputs are preallocated,
    data-dependent ones (NMS) come back through an output allocator.
    """

    def __init__(self, engine_path: str | os.PathLike, task: str, device: int = 0):
        check_task(task)
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
        x = as_tensor(batch)
        if self.task == "classification":
            chunks = [self.infer(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
            return torch.cat([c[self.output_names[0]] for c in chunks]).float().cpu().numpy()
        results = []
        for i in range(len(x)):
            out = self.infer(x[i : i + 1])
            results.append(to_numpy_dets(out["boxes"], out["scores"], out["labels"]))
        return results


def build(model: nn.Module, task: str, preprocess: dict, out_dir: Path, *, precision: str = "fp32",
          dynamic_batch: bool = True, opset: int | None = None, image_size=None) -> tuple[Path, dict]:
    """The export job's step: the ONNX export, then ``model.engine`` built from it; the ONNX
    description is kept under ``onnx``."""
    onnx_path, info = onnx_format.build(model, task, preprocess, out_dir, dynamic_batch=dynamic_batch, opset=opset)
    path = Path(out_dir) / MODEL_FILE
    return path, {**info, "onnx": info, **export_tensorrt(onnx_path, path, precision=precision, image_size=image_size)}


def load_runner(path: str | os.PathLike, task: str, device: str = "cpu") -> TensorRTRunner:
    return TensorRTRunner(path, task)
