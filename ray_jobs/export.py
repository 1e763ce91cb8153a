"""Export as a Ray task: checkpoint → ONNX / TorchScript / TensorRT (from the ONNX), then checked
against PyTorch (parity on a real batch, the test-subset metric with both, latency at batch 1
and N), then a ready-to-run bundle. Also a CLI for `ray job submit`:
`python -m ray_jobs.export --project P --experiment E --format onnx`.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import numpy as np
import ray
import typer

PARITY_IMAGES = 8
METRIC_MAX_IMAGES = 500


def task_resources(fmt: str, gpu_fraction: float) -> dict:
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    return {"num_gpus": (1 if fmt == "tensorrt" else gpu_fraction) if has_gpu else 0, "num_cpus": 1}


def _batch(paths: list[str], preprocess: dict) -> np.ndarray:
    from ray_jobs.core.exporters import preprocess_image

    return np.concatenate([preprocess_image(p, preprocess)[0] for p in paths])


def _metric(task: str, runner, samples: list[dict], preprocess: dict, class_names: list[str]) -> float | None:
    """Accuracy (classification) or mAP@.5 (detection) of one runtime on the samples, using
    exactly the bundle's preprocessing; detection boxes are scaled back to image pixels and, as
    in an evaluation, detections scoring below MIN_DETECTION_SCORE are left out."""
    from ray_jobs.core.metrics import detection_metrics

    if task == "classification":
        correct = 0
        for start in range(0, len(samples), 32):
            chunk = samples[start:start + 32]
            logits = runner(_batch([s["path"] for s in chunk], preprocess))
            correct += int((np.asarray(logits).argmax(1) == np.array([s["label"] for s in chunk])).sum())
        return correct / len(samples)
    from ray_jobs.core.exporters import preprocess_image
    from ray_jobs.evaluate import confident

    size = preprocess["image_size"]
    preds = []
    for s in samples:
        x, (w, h) = preprocess_image(s["path"], preprocess)
        det = runner(x)[0]
        scale = np.array([w / size, h / size, w / size, h / size])
        preds.append(confident({"boxes": (np.asarray(det["boxes"]).reshape(-1, 4) * scale).tolist(),
                                "labels": np.asarray(det["labels"]).astype(int).tolist(),
                                "scores": np.asarray(det["scores"]).tolist()}))
    gts = [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples]
    return detection_metrics(gts, preds, class_names)["map50"]


@ray.remote(max_retries=0)
def export_task(db_url: str, workspace_root: str, export_id: str) -> str:
    import torch

    from appliance.core.db import session_scope
    from appliance.core.models import Experiment, Export
    from appliance.core.paths import Workspace
    from appliance.services import export as svc
    from appliance.services.evaluation import checkpoint_path
    from appliance.services.training import load_run_inputs, subset_samples
    from ray_jobs.core import exporters
    from ray_jobs.core.inference import load_checkpoint

    workspace = Workspace(Path(workspace_root))
    try:
        with session_scope(db_url) as s:
            export = s.get(Export, export_id)
            exp = s.get(Experiment, export.experiment_id)
            fmt, precision, dynamic_batch, opset = export.format, export.precision, export.dynamic_batch, export.opset
            ckpt = checkpoint_path(workspace, exp, (export.info or {}).get("checkpoint", "best"))
            train, val = load_run_inputs(s, workspace, exp)
            test = subset_samples(s, workspace, exp, "test")
        svc.update(db_url, export_id, status="running", info={"stage": "exporting"})
        out_dir = workspace.export_dir(exp.project_id, export_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        model, meta = load_checkpoint(ckpt)
        task, preprocess, class_names = meta["task"], meta["preprocess"], meta["class_names"]

        onnx_path = out_dir / exporters.MODEL_FILENAMES["onnx"]
        if fmt == "torchscript":
            model_file = out_dir / exporters.MODEL_FILENAMES["torchscript"]
            info = exporters.export_torchscript(model, task, preprocess, model_file)
        else:
            info = exporters.export_onnx(model, task, preprocess, onnx_path, dynamic_batch=dynamic_batch, opset=opset)
            model_file = onnx_path
            if fmt == "tensorrt":
                model_file = out_dir / exporters.MODEL_FILENAMES["tensorrt"]
                info = {**info, "onnx": info, **exporters.export_tensorrt(
                    onnx_path, model_file, precision=precision, image_size=meta["image_size"])}

        svc.update(db_url, export_id, info={"stage": "verifying"})
        sample_paths = [s["path"] for s in (val or train)[:PARITY_IMAGES]]
        batch = _batch(sample_paths, preprocess)
        if task == "detection":
            batch = batch[:4]  # detection graphs run one image at a time
        parity = exporters.parity_check(model, task, model_file, fmt, batch, precision=precision, device=device)
        reference = exporters.PyTorchRunner(exporters._cpu_eval_copy(model), task, device=device)
        runtime = exporters.load_runner(model_file, fmt, task, device=device)
        latency = exporters.latency_report(reference, runtime, batch, batch_n=32 if task == "classification" else 4,
                                           iters=5 if device == "cpu" else 20)
        metric = None
        if test:
            subset = test[:METRIC_MAX_IMAGES]
            ours, theirs = _metric(task, reference, subset, preprocess, class_names), _metric(task, runtime, subset, preprocess, class_names)
            delta = None if ours is None or theirs is None else theirs - ours
            metric = {"name": "accuracy" if task == "classification" else "mAP@.5", "subset": "test",
                      "images": len(subset), "pytorch": ours, "exported": theirs, "delta": delta,
                      "flagged": delta is not None and delta < -svc.METRIC_DROP_FLAG}
        summary = {**info, "parity": parity, "latency": latency, "metric_delta": metric}
        bundle = exporters.write_bundle(out_dir / svc.BUNDLE_NAME, model_file, class_names, preprocess, task, summary, fmt)
        svc.update(db_url, export_id, status="completed", size_bytes=model_file.stat().st_size,
                   info={"stage": "done", "export": info, "parity": parity, "latency": latency, "metric": metric,
                         "bundle": bundle})
        return "completed"
    except Exception as exc:
        svc.update(db_url, export_id, status="failed",
                   error="".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:])
        return "failed"


cli = typer.Typer(add_completion=False)


@cli.command()
def main(
    project: Annotated[str, typer.Option(help="Project id (proj-…)")],
    experiment: Annotated[str, typer.Option(help="Experiment id (exp-…)")],
    format: Annotated[str, typer.Option(help="onnx, torchscript or tensorrt")] = "onnx",
    precision: Annotated[str, typer.Option(help="fp32, or fp16 for tensorrt")] = "fp32",
) -> None:
    """Export an experiment of a running AI Studio on this Ray cluster."""
    from appliance.core.db import session_factory
    from appliance.core.paths import Workspace
    from appliance.services import export as svc
    from ray_jobs.events import appliance_settings

    settings = appliance_settings()
    body = svc.ExportRun(project_id=project, experiment_id=experiment, format=format, precision=precision)
    with session_factory(settings["db_url"])() as session:
        svc.check_request(session, Workspace(Path(settings["workspace"])), body)
        export = svc.request_export(session, body)
    status = ray.get(export_task.options(**task_resources(format, settings["eval_gpu_fraction"])).remote(
        settings["db_url"], settings["workspace"], export.id))
    typer.echo(f"{export.id}: {status}")
    raise typer.Exit(0 if status == "completed" else 1)


if __name__ == "__main__":
    cli()
