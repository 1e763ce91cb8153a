"""The FORMATS registry: format name -> exporter step, runner, file names and bundle texts.

A new export format is one module (``build`` + ``load_runner``), one entry here and one
``bundle_templates/runtime_<name>.py`` (the part of the bundle's predict.py that runs the file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from . import onnx, tensorrt, torchscript
from .common import TENSORRT_NOTE, ExportError, check_precision, check_task


@dataclass(frozen=True)
class ExportFormat:
    name: str
    model_file: str  # the file name in the export folder and in the bundle
    build: Callable[..., tuple[Path, dict]]  # (model, task, preprocess, out_dir, **options) -> (file, info)
    load_runner: Callable[..., Callable]  # (path, task, device) -> runner (see common.py)
    requirements: str  # the bundle README's install line
    bundle_notes: tuple[str, ...] = ()  # always listed in the bundle README
    sidecar: tuple[str, str] | None = None  # (bundle file name, info key written to it as JSON)


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        "onnx", onnx.MODEL_FILE, onnx.build, onnx.load_runner,
        requirements="pip install numpy pillow onnxruntime",
    ),
    "torchscript": ExportFormat(
        "torchscript", torchscript.MODEL_FILE, torchscript.build, torchscript.load_runner,
        requirements="pip install numpy pillow torch torchvision  # torchvision: detection models only",
    ),
    "tensorrt": ExportFormat(
        "tensorrt", tensorrt.MODEL_FILE, tensorrt.build, tensorrt.load_runner,
        requirements="pip install numpy pillow torch tensorrt  # same TensorRT version as in the details above",
        bundle_notes=(TENSORRT_NOTE,),
        sidecar=("engine.json", "tensorrt"),
    ),
}
MODEL_FILENAMES = {name: f.model_file for name, f in FORMATS.items()}


def check(task: str, fmt: str | None = None, precision: str | None = None) -> None:
    """ExportError for an unknown task, format or precision (in that order)."""
    check_task(task)
    if fmt is not None and fmt not in FORMATS:
        raise ExportError(f"Invalid format {fmt!r}. Only {', '.join(FORMATS)} are supported.")
    check_precision(precision)


def export_model(fmt: str, model: nn.Module, task: str, preprocess: dict, out_dir: str | os.PathLike, *,
                 precision: str = "fp32", dynamic_batch: bool = True, opset: int | None = None,
                 image_size=None) -> tuple[Path, dict]:
    """Export ``model`` in ``fmt`` into ``out_dir``; returns (the model file, its description)."""
    check(task, fmt)
    return FORMATS[fmt].build(model, task, preprocess, Path(out_dir), precision=precision,
                              dynamic_batch=dynamic_batch, opset=opset, image_size=image_size)


def load_runner(path: str | os.PathLike, fmt: str, task: str, device: str = "cpu") -> Callable:
    """The runner for an exported file (onnxruntime uses the CPU provider unless device is cuda)."""
    check(task, fmt)
    return FORMATS[fmt].load_runner(path, task, device)
