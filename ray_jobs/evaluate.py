"""Evaluation as a fractional-GPU Ray task: predict a split subset with a checkpoint, compute the
metrics (ray_jobs.core.metrics: pycocotools for detection), store per-sample results.

On a GPU cluster each task asks for `eval_gpu_fraction` of a GPU (0.25 → four share a card) and
caps its CUDA memory to that fraction; on a cluster without GPUs it asks for none (a
fractional-GPU request there would wait forever). Also a CLI for `ray job submit`:
`python -m ray_jobs.evaluate --project P --experiment E --subset test --checkpoint best`.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Annotated

import ray
import typer

from appliance.store import evaluations
from appliance.store.db import session_factory
from appliance.store.paths import Workspace
from appliance.store.records import get_owned
from appliance.store.status import JobStatus
from appliance.store.tables import Experiment
from ray_jobs.events import appliance_settings, pass_gate_if_testing
from ray_jobs.gpus import cluster_gpus

GPU_DECODE_WORKERS = 3
CPU_DECODE_WORKERS = 1  # one thread decodes the next batch while torch runs this one
PROGRESS_EVERY_S = 0.5
EVALUATIONS_GATE = "evaluations"  # test hook: the gate id every evaluation passes at `running` (ray_jobs.events)


def task_resources(gpu_fraction: float) -> dict:
    has_gpu = cluster_gpus() > 0  # GPUs up, or added on demand (ray_jobs.gpus)
    return {"num_gpus": gpu_fraction if has_gpu else 0, "num_cpus": 1}


def predict_resources(gpu_fraction: float) -> dict:
    """"Try one image": a GPU share when one is free now, else the CPU — one image does not need to wait
    for a training run that holds the GPU."""
    resources = task_resources(gpu_fraction)
    if resources["num_gpus"] and ray.available_resources().get("GPU", 0) < resources["num_gpus"]:
        resources["num_gpus"] = 0
    return resources


def task_threads() -> int:
    """The CPUs Ray gave this task (at least 1): torch's intra-op threads in it, set explicitly rather
    than left to whatever OMP_NUM_THREADS the worker process happens to have. 0 outside a Ray task
    (a driver, a test): torch's setting stays."""
    if not ray.is_initialized() or ray.get_runtime_context().get_task_id() is None:
        return 0
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(cpus))


def predict_samples(checkpoint: str, samples: list[dict], gpu_fraction: float, on_progress=None) -> tuple[dict, list[dict]]:
    """Predict every sample (in order) on this task's GPU share, or the CPU: the checkpoint loaded
    once, batches sized from the model's image size, decoding overlapped with the model."""
    import torch

    from ray_jobs.core.inference import predict_checkpoint

    device = "cuda" if torch.cuda.is_available() and ray.is_initialized() and ray.get_gpu_ids() else "cpu"
    threads = task_threads()
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    workers = GPU_DECODE_WORKERS if device == "cuda" else CPU_DECODE_WORKERS
    return predict_checkpoint(checkpoint, [s["path"] for s in samples], device, gpu_fraction, None, on_progress, workers)


def compute_results(task: str, class_names: list[str], samples: list[dict], predictions: list[dict]) -> tuple[dict, list[dict]]:
    import numpy as np

    from ray_jobs.core.metrics import (
        MIN_DETECTION_SCORE, classification_metrics, confident, detection_metrics, rank_samples,
    )

    if task == "classification":
        truth = [s["label"] for s in samples]
        probs = np.array([p["probs"] for p in predictions])
        return classification_metrics(truth, probs, class_names), rank_samples(task, truth, probs, class_names)
    gts = [{"boxes": s["boxes"], "labels": s["labels"], "difficult": s.get("difficult", [False] * len(s["boxes"]))}
           for s in samples]
    preds = [confident(p) for p in predictions]
    return (detection_metrics(gts, preds, class_names),
            rank_samples(task, gts, preds, class_names, store_min_score=MIN_DETECTION_SCORE))


def apply_image_limit() -> None:
    """The appliance's AISTUDIO_MAX_IMAGE_PIXELS, in this worker (from the event bus)."""
    from ray_jobs.core.data import set_max_image_pixels

    try:
        set_max_image_pixels(appliance_settings().get("max_image_pixels"))
    except Exception:  # no appliance on this cluster: the default limit stays
        pass


@ray.remote(max_retries=0)
def evaluation_task(db_url: str, workspace_root: str, evaluation_id: str, gpu_fraction: float) -> str:
    if not evaluations.start(db_url, evaluation_id):
        return JobStatus.FAILED  # cancelled (or deleted) before it started: nothing to do
    try:
        apply_image_limit()
        inputs = evaluations.evaluation_inputs(db_url, Workspace(Path(workspace_root)), evaluation_id)
        samples = inputs["samples"]
        evaluations.set_progress(db_url, evaluation_id, 0, len(samples))
        pass_gate_if_testing(evaluation_id, "running")
        pass_gate_if_testing(EVALUATIONS_GATE, "running")  # every evaluation: a test holds them all at once
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] > PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                evaluations.set_progress(db_url, evaluation_id, done, total)

        _, predictions = predict_samples(inputs["checkpoint"], samples, gpu_fraction, progress)
        metrics, records = compute_results(inputs["task"], inputs["class_names"], samples, predictions)
        evaluations.save_results(db_url, evaluation_id, metrics, records, samples)
        return JobStatus.COMPLETED
    except Exception as exc:
        evaluations.fail(db_url, evaluation_id, "".join(traceback.format_exception_only(type(exc), exc)).strip())
        return JobStatus.FAILED


@ray.remote(max_retries=0)
def predict_task(checkpoint: str, paths: list[str], gpu_fraction: float) -> list[dict]:
    """"Try one image": the same inference code the evaluation uses, the same detections kept."""
    from ray_jobs.core.metrics import confident

    apply_image_limit()
    _, predictions = predict_samples(checkpoint, [{"path": p} for p in paths], gpu_fraction)
    return [confident(p) if "scores" in p else p for p in predictions]


cli = typer.Typer(add_completion=False)


@cli.command()
def main(
    project: Annotated[str, typer.Option(help="Project id (proj-…)")],
    experiment: Annotated[str, typer.Option(help="Experiment id (exp-…)")],
    subset: Annotated[str, typer.Option(help="test or val")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
) -> None:
    """Evaluate an experiment of a running AI Studio on this Ray cluster."""
    if subset not in ("test", "val") or checkpoint not in ("best", "last"):
        raise typer.BadParameter("--subset is test or val, --checkpoint is best or last")
    settings = appliance_settings()
    workspace = Workspace(Path(settings["workspace"]))
    with session_factory(settings["db_url"])() as session:
        exp = get_owned(session, Experiment, "experiment", project, experiment)
        total = evaluations.check(session, workspace, exp, subset, checkpoint)
        ev = evaluations.queue(session, project, experiment, subset, checkpoint, total)
    fraction = settings["eval_gpu_fraction"]
    status = ray.get(evaluation_task.options(**task_resources(fraction)).remote(settings["db_url"], settings["workspace"], ev.id, fraction))
    typer.echo(f"{ev.id}: {status}")
    raise typer.Exit(0 if status == JobStatus.COMPLETED else 1)


if __name__ == "__main__":
    cli()
