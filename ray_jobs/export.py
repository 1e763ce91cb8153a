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

PARITY_IMAGES = 8
METRIC_MAX_IMAGES = 500


def task_resources(fmt: str, gpu_fraction: float) -> dict:
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    return {"num_gpus": (1 if fmt == "tensorrt" else gpu_fraction) if has_gpu else 0, "num_cpus": 1}


@ray.remote(max_retries=0)
def export_task(db_url: str, workspace_root: str, export_id: str) -> str:
    import torch

    from appliance.store.db import session_scope
    from appliance.store.tables import Experiment, Export
    from appliance.store.paths import Workspace
    from appliance.services import export as svc
    from appliance.services.evaluation import checkpoint_path
    from appliance.services.training import load_run_inputs, subset_samples
    from ray_jobs.core import export as exporting
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

        model_file, info = exporting.export_model(fmt, model, task, preprocess, out_dir, precision=precision,
                                                  dynamic_batch=dynamic_batch, opset=opset,
                                                  image_size=meta["image_size"])

        svc.update(db_url, export_id, info={"stage": "verifying"})
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
                      "flagged": delta is not None and delta < -svc.METRIC_DROP_FLAG}
        summary = {**info, "parity": parity, "latency": latency, "metric_delta": metric}
        bundle = exporting.write_bundle(out_dir / svc.BUNDLE_NAME, model_file, class_names, preprocess, task, summary, fmt)
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
    from appliance.store.db import session_factory
    from appliance.store.paths import Workspace
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
