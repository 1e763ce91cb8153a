"""The ready-to-run bundle: a ZIP with the model file, labels, preprocessing, the export record,
a README and a predict.py generated from one template plus the format's runtime part."""

from __future__ import annotations

import ast
import json
import os
import string
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

from .common import image_hw
from .formats import FORMATS, check

TEMPLATES = Path(__file__).parent.parent / "bundle_templates"
OUTPUT_DOC = {
    "classification": '{"label": "cat", "index": 0, "score": 0.93, "top": [...]}',
    "detection": '{"boxes": [[x1, y1, x2, y2], ...], "labels": [0, ...], "label_names": ["cat", ...], '
                 '"scores": [0.9, ...]}  (boxes in original image pixels)',
}
# predict.py's own imports; a runtime part adds its own (merged, deduplicated, sorted)
PREDICT_IMPORTS = ("import argparse", "import json", "import pathlib", "import sys",
                   "from aistudio_prediction import IMAGE_SUFFIXES, NotAnImage, classification, detection, "
                   "image_paths, preprocess")
# The shared preprocessing/post-processing, shipped verbatim: the endpoints import the same file.
PREDICTION_MODULE = Path(__file__).resolve().parents[2] / "prediction.py"
PREDICTION_NAME = "aistudio_prediction.py"
# Everyone who can read the ZIP can read what it unpacks to (zipfile's writestr defaults to 0600).
FILE_MODE, SCRIPT_MODE = 0o644, 0o755


def _import_block(lines: set[str]) -> str:
    """stdlib imports, a blank line, third-party imports; ``import x`` before ``from x import``."""
    def module(line: str) -> str:
        return line.split()[1].split(".")[0]

    def ordered(group):
        key = lambda line: module(line).lower()  # noqa: E731
        return sorted((x for x in group if x.startswith("import ")), key=key) + \
            sorted((x for x in group if x.startswith("from ")), key=key)

    stdlib = [x for x in lines if module(x) in sys.stdlib_module_names]
    others = [x for x in lines if x not in stdlib]
    return "\n".join(ordered(stdlib)) + "\n\n" + "\n".join(ordered(others))


def render_predict(fmt: str) -> str:
    """predict.py for ``fmt``: predict.py.tmpl with bundle_templates/runtime_<fmt>.py filled in
    (its docstring heads the script, its imports join the script's, its code defines run_model)."""
    source = (TEMPLATES / f"runtime_{fmt}.py").read_text()
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    lines = source.splitlines()
    code = "\n".join(lines[max(n.end_lineno for n in imports):]).strip("\n")
    template = string.Template((TEMPLATES / "predict.py.tmpl").read_text())
    return template.substitute(
        doc=ast.get_docstring(tree, clean=True),
        imports=_import_block({*PREDICT_IMPORTS, *(ast.get_source_segment(source, n) for n in imports)}),
        runtime=code,
    )


def _fmt_float(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def _parity_text(task: str, parity: dict) -> str:
    if not parity:
        return "not measured"
    if task == "classification":
        return (
            f"max abs logit difference {_fmt_float(parity.get('max_abs_diff'))} at batch sizes "
            f"{parity.get('batch_sizes')} (tolerance {parity.get('tolerance')}): "
            f"{'passed' if parity.get('passed') else 'FAILED'}; top-1 agreement "
            f"{_fmt_float(parity.get('top1_agreement'))}"
        )
    return (
        f"top-{parity.get('top_k')} detections matched {parity.get('num_matched')}/"
        f"{parity.get('num_reference')} (rate {_fmt_float(parity.get('match_rate'))}), "
        f"max box diff {_fmt_float(parity.get('max_box_diff'))} px, max score diff "
        f"{_fmt_float(parity.get('max_score_diff'))}: {'passed' if parity.get('passed') else 'FAILED'}"
    )


def _latency_table(lat: dict) -> str:
    rows = []
    for key in ("batch_1", "batch_n"):
        if key in lat:
            r = lat[key]
            rows.append(
                f"| {r['pytorch']['batch_size']} | {r['pytorch']['p50_ms']:.2f} | {r['exported']['p50_ms']:.2f} "
                f"| {r['pytorch']['images_per_s']:.1f} | {r['exported']['images_per_s']:.1f} "
                f"| {r['throughput_ratio']:.2f}x |"
            )
    return (
        "| batch | PyTorch p50 ms | exported p50 ms | PyTorch img/s | exported img/s | ratio |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
        if rows else "not measured"
    )


def _details(info: dict) -> list[str]:
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
    return details


def _readme(task, fmt, class_names, preprocess, info) -> str:
    spec = FORMATS[fmt]
    notes = list(info.get("notes") or [])
    notes += [n for n in spec.bundle_notes if n not in notes]
    template = string.Template((TEMPLATES / "README.md.tmpl").read_text())
    return template.substitute(
        task=task,
        fmt=fmt,
        model_file=spec.model_file,
        num_classes=len(class_names),
        classes=", ".join(map(str, class_names[:20])) + (" ..." if len(class_names) > 20 else ""),
        requirements=spec.requirements,
        image_size="{} x {}".format(*image_hw(preprocess)),
        details="\n".join(_details(info)),
        parity=_parity_text(task, info.get("parity") or {}),
        latency=_latency_table(info.get("latency") or {}),
        notes="\n".join(f"- {n}" for n in notes) or "- none",
        output=OUTPUT_DOC[task],
    )


def _add(zf: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix: unzip and Python's extractors honour the mode bits
    info.external_attr = (0o100000 | mode) << 16
    zf.writestr(info, data)


def write_bundle(
    out_zip: str | os.PathLike,
    model_file: str | os.PathLike,
    class_names: Sequence[str],
    preprocess: dict,
    task: str,
    info: dict,
    fmt: str,
) -> dict[str, Any]:
    """ZIP: model file, labels.json, preprocess.json, export.json, predict.py, aistudio_prediction.py, README.md.

    ``info`` is the export dict, optionally with ``parity`` / ``latency`` / ``metric_delta``
    added by the job; it is stored as export.json and summarised in the README. A TensorRT
    bundle also carries the engine's sidecar JSON (versions, GPU).
    """
    check(task, fmt)
    spec = FORMATS[fmt]
    out_zip, model_file = Path(out_zip), Path(model_file)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    export_meta = {
        **info,
        "task": task,
        "format": fmt,
        "model_file": spec.model_file,
        "score_threshold": info.get("score_threshold", 0.25),
    }
    files = {
        "labels.json": json.dumps([str(c) for c in class_names], indent=2),
        "preprocess.json": json.dumps(preprocess, indent=2),
        "export.json": json.dumps(export_meta, indent=2, default=str),
        "predict.py": render_predict(fmt),
        "README.md": _readme(task, fmt, list(class_names), preprocess, info),
    }
    if spec.sidecar and info.get(spec.sidecar[1]):
        files[spec.sidecar[0]] = json.dumps(info[spec.sidecar[1]], indent=2)
    files[PREDICTION_NAME] = PREDICTION_MODULE.read_text()
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        _add(zf, spec.model_file, model_file.read_bytes(), FILE_MODE)
        for name, text in files.items():
            _add(zf, name, text.encode(), SCRIPT_MODE if name == "predict.py" else FILE_MODE)
    return {
        "path": str(out_zip),
        "entries": [spec.model_file, *files],
        "size_bytes": out_zip.stat().st_size,
    }

