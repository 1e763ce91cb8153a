"""Export as a Ray task: checkpoint → ONNX / TorchScript / TensorRT (from the ONNX), then checked
against PyTorch (parity on a real batch, the test-subset metric with both, latency at batch 1
and N), then a ready-to-run bundle. Also a CLI for `ray job submit`:
`python -m ray_jobs.export --project P --experiment E --format onnx`.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import ray
import typer

from appliance.store import exports
from appliance.store.db import session_factory
from appliance.store.errors import Unavailable, ValidationFailed
from appliance.store.paths import Workspace
from appliance.store.records import get_owned
from appliance.store.runs import trained_checkpoint
from appliance.store.status import JobStatus
from appliance.store.tables import Experiment
from ray_jobs.events import appliance_settings, pass_gate_if_testing
from ray_jobs.gpus import cluster_gpus

PARITY_IMAGES = 8
METRIC_MAX_IMAGES = 500
METRIC_DROP_FLAG = 0.01  # an exported model more than 1 point worse than PyTorch is flagged


def check_format(fmt: str, precision: str, cluster_gpus: float) -> None:
    """The refusals that need no record: fp16 outside TensorRT, TensorRT where no engine can be built."""
    if precision == "fp16" and fmt != "tensorrt":
        raise ValidationFailed(
            "precision: fp16 is a TensorRT build option; ONNX and TorchScript exports are fp32 "
            "(choose format tensorrt for fp16)"
        )
    if fmt == "tensorrt":
        from ray_jobs.core.export import tensorrt_available

        ready, reason = tensorrt_available()
        if not ready:
            raise Unavailable(f"TensorRT export needs an NVIDIA GPU host with TensorRT installed: {reason}")
        if cluster_gpus <= 0:
            raise Unavailable("TensorRT export needs a GPU in the Ray cluster; this cluster has none")


def task_resources(fmt: str, gpu_fraction: float) -> dict:
    has_gpu = cluster_gpus() > 0  # GPUs up, or added on demand (ray_jobs.gpus)
    return {"num_gpus": (1 if fmt == "tensorrt" else gpu_fraction) if has_gpu else 0, "num_cpus": 1}


@ray.remote(max_retries=0)
def export_task(db_url: str, workspace_root: str, export_id: str) -> str:
    import torch

    from ray_jobs.core import export as exporting
    from ray_jobs.core.inference import load_checkpoint

    workspace = Workspace(Path(workspace_root))
    if not exports.start(db_url, export_id):
        return JobStatus.FAILED  # cancelled (or deleted) before it started: nothing to do
    try:
        job = exports.plan(db_url, workspace, export_id)
        fmt, precision, dynamic_batch, opset = job.format, job.precision, job.dynamic_batch, job.opset
        ckpt, out_dir, train, val, test = job.checkpoint, job.out_dir, job.train, job.val, job.test
        exports.update(db_url, export_id, info={"stage": "exporting"})
        out_dir.mkdir(parents=True, exist_ok=True)
        pass_gate_if_testing(export_id, "running")
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        model, meta = load_checkpoint(ckpt)
        task, preprocess, class_names = meta["task"], meta["preprocess"], meta["class_names"]

        model_file, info = exporting.export_model(fmt, model, task, preprocess, out_dir, precision=precision,
                                                  dynamic_batch=dynamic_batch, opset=opset,
                                                  image_size=meta["image_size"])

        exports.update(db_url, export_id, info={"stage": "verifying"})
        sample_paths = [s["path"] for s in (val or train)[:PARITY_IMAGES]]
        batch = exporting.sample_batch(sample_paths, preprocess)
        if task == "detection":
            batch = batch[:4]  # detection graphs run one image at a time
        parity = exporting.parity_check(model, task, model_file, fmt, batch, precision=precision, device=device)
        reference = exporting.PyTorchRunner(exporting.cpu_eval_copy(model), task, device=device)
        runtime = exporting.load_runner(model_file, fmt, task, device=device)
        latency = exporting.latency_report(reference, runtime, batch, batch_n=32 if task == "classification" else 4,
                                           iters=5 if device == "cpu" else 20)
        metric = None
        if test:
            subset = test[:METRIC_MAX_IMAGES]
            ours, theirs = (exporting.runtime_metric(task, r, subset, preprocess, class_names) for r in (reference, runtime))
            delta = None if ours is None or theirs is None else theirs - ours
            metric = {"name": "accuracy" if task == "classification" else "mAP@.5", "subset": "test",
                      "images": len(subset), "pytorch": ours, "exported": theirs, "delta": delta,
                      "flagged": delta is not None and delta < -METRIC_DROP_FLAG}
        summary = {**info, "parity": parity, "latency": latency, "metric_delta": metric}
        bundle = exporting.write_bundle(out_dir / exports.BUNDLE_NAME, model_file, class_names, preprocess, task, summary, fmt)
        exports.update(db_url, export_id, status=JobStatus.COMPLETED, size_bytes=model_file.stat().st_size,
                   info={"stage": "done", "export": info, "parity": parity, "latency": latency, "metric": metric,
                         "bundle": bundle})
        return JobStatus.COMPLETED
    except Exception as exc:
        exports.update(db_url, export_id, status=JobStatus.FAILED,
                   error="".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:])
        return JobStatus.FAILED


cli = typer.Typer(add_completion=False)
CLI_FORMATS = ("onnx", "torchscript", "tensorrt")


@cli.command()
def main(
    project: Annotated[str, typer.Option(help="Project id (proj-…)")],
    experiment: Annotated[str, typer.Option(help="Experiment id (exp-…)")],
    format: Annotated[str, typer.Option(help="onnx, torchscript or tensorrt")] = "onnx",
    precision: Annotated[str, typer.Option(help="fp32, or fp16 for tensorrt")] = "fp32",
) -> None:
    """Export an experiment of a running AI Studio on this Ray cluster."""
    if format not in CLI_FORMATS or precision not in ("fp32", "fp16"):
        raise typer.BadParameter(f"format is one of {', '.join(CLI_FORMATS)}; precision is fp32 or fp16")
    settings = appliance_settings()
    with session_factory(settings["db_url"])() as session:
        exp = get_owned(session, Experiment, "experiment", project, experiment)
        trained_checkpoint(Workspace(Path(settings["workspace"])), exp, "best")
        check_format(format, precision, cluster_gpus())
        export = exports.queue(session, project, experiment, format, precision, dynamic_batch=True, opset=None,
                               checkpoint="best")
    status = ray.get(export_task.options(**task_resources(format, settings["eval_gpu_fraction"])).remote(
        settings["db_url"], settings["workspace"], export.id))
    typer.echo(f"{export.id}: {status}")
    raise typer.Exit(0 if status == JobStatus.COMPLETED else 1)


if __name__ == "__main__":
    cli()
