"""Evaluations: requests, records, per-sample results. The work runs as a fractional-GPU Ray
task (`ray_jobs.evaluate`); several may run at once (the runner's evaluation lane)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store import evaluations, runs
from appliance.store.db import session_scope
from appliance.store.errors import Unavailable
from appliance.store.paths import Workspace
from appliance.store.status import JobStatus
from appliance.store.tables import EvalSample, EvalSampleCell, EvalSampleClass, Evaluation, Experiment, Image
from appliance.schemas import StrictBody
from appliance.services import baselines, deletion, ray_tasks
from appliance.services.projects import get_owned, get_project
from appliance.services.thumbnails import thumbnail_url
from appliance.services.training import get_experiment

log = logging.getLogger("aistudio.evaluation")
BUSY_RETRY_AFTER_S = 5
TIMEOUT_RETRY_AFTER_S = 10


class EvaluationRun(StrictBody):
    project_id: str
    experiment_id: str
    subset: Literal["test", "val"] = "test"
    checkpoint: Literal["best", "last"] = "best"


def trained_checkpoint(session: Session, workspace: Workspace, project_id: str, experiment_id: str, which: str) -> tuple[Experiment, Path]:
    """The experiment and its checkpoint file; a clear 422 when it was never trained."""
    exp = get_experiment(session, project_id, experiment_id)
    return exp, runs.trained_checkpoint(workspace, exp, which)


def check_request(session: Session, workspace: Workspace, body: EvaluationRun) -> int:
    """Validate an evaluation request without writing anything; returns the subset's image count."""
    exp = get_experiment(session, body.project_id, body.experiment_id)
    return evaluations.check(session, workspace, exp, body.subset, body.checkpoint)


def request_evaluation(session: Session, workspace: Workspace, body: EvaluationRun) -> Evaluation:
    count = check_request(session, workspace, body)
    return evaluations.queue(session, body.project_id, body.experiment_id, body.subset, body.checkpoint, count)


def get_evaluation(session: Session, project_id: str, evaluation_id: str) -> Evaluation:
    return get_owned(session, Evaluation, "evaluation", project_id, evaluation_id)


def evaluation_public(session: Session, ev: Evaluation, with_metrics: bool = True) -> dict:
    exp = session.get(Experiment, ev.experiment_id)
    data = {
        "id": ev.id, "project_id": ev.project_id, "experiment_id": ev.experiment_id,
        "experiment_name": exp.name if exp else None, "model": exp.model if exp else None,
        "subset": ev.subset, "checkpoint": ev.checkpoint, "status": ev.status, "done": ev.done, "total": ev.total,
        "error": ev.error, "created_at": ev.created_at, "finished_at": ev.finished_at,
        "headline": headline(ev.metrics), **baselines.for_evaluation(ev.metrics),
        "waiting": ray_tasks.waiting(ev.id) if ev.status == JobStatus.QUEUED else None,
    }
    if with_metrics:
        data["metrics"] = ev.metrics
    return data


def headline(metrics: dict | None) -> dict:
    if not metrics:
        return {}
    if metrics.get("task") == "classification":
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro"]["f1"], "top5": metrics.get("top5")}
    return {"map": metrics.get("map"), "map50": metrics.get("map50"), "map75": metrics.get("map75")}


def list_evaluations(session: Session, project_id: str) -> list[dict]:
    get_project(session, project_id)
    rows = session.scalars(select(Evaluation).where(Evaluation.project_id == project_id).order_by(Evaluation.created_at.desc()))
    return [evaluation_public(session, ev, with_metrics=False) for ev in rows]


def delete_evaluation(session: Session, workspace: Workspace, project_id: str, evaluation_id: str,
                      force: bool = False) -> None:
    ev = get_evaluation(session, project_id, evaluation_id)
    jobs = [deletion.Job("evaluation", ev.id, ev.status)] if ev.status in deletion.BLOCKING else []
    deletion.clear_the_way(session, f"Evaluation {evaluation_id}", jobs, force)
    session.delete(ev)
    session.commit()


def list_samples(session: Session, project_id: str, evaluation_id: str, kind: str, label: str | None,
                 cell: tuple[int, int] | None, offset: int, limit: int) -> tuple[list[dict], int]:
    """A page of an evaluation's samples, worst first, filtered and counted in SQL: the confusion
    cell and the detection class through their side tables (`eval_sample_cells`, `..._classes`)."""
    ev = get_evaluation(session, project_id, evaluation_id)
    query = select(EvalSample).where(EvalSample.evaluation_id == ev.id)
    if kind == "errors":
        query = query.where(EvalSample.is_error.is_(True))
    detection = (ev.metrics or {}).get("task") == "detection"
    if label and not detection:
        query = query.where(EvalSample.label == label)
    if label and detection:  # an image belongs to every class among its true or predicted boxes
        names = ev.metrics["confusion_matrix"]["labels"]
        index = names.index(label) if label in names else -1
        query = query.where(EvalSample.image_id.in_(select(EvalSampleClass.image_id).where(
            EvalSampleClass.evaluation_id == ev.id, EvalSampleClass.class_index == index)))
    if cell is not None:  # confusion-matrix cell: [truth, prediction]
        query = query.where(EvalSample.image_id.in_(select(EvalSampleCell.image_id).where(
            EvalSampleCell.evaluation_id == ev.id, EvalSampleCell.truth == cell[0], EvalSampleCell.pred == cell[1])))
    total = session.scalar(query.with_only_columns(func.count()).order_by(None)) or 0
    shown = list(session.scalars(query.order_by(EvalSample.rank).offset(offset).limit(limit)))
    images = {row.id: row for row in session.execute(
        select(Image.id, Image.original_name, Image.sha256).where(Image.id.in_([r.image_id for r in shown])))}
    return [{**_sample_public(project_id, r, images.get(r.image_id)),
             "original_name": images[r.image_id].original_name if r.image_id in images else None}
            for r in shown], total


def _sample_public(project_id: str, row: EvalSample, image=None) -> dict:
    filename = row.payload.get("filename")
    return {
        "image_id": row.image_id, "rank": row.rank, "is_error": row.is_error, "label": row.label, **row.payload,
        "url": f"/api/datasets/{project_id}/image/{filename}",
        "thumbnail_url": thumbnail_url(project_id, filename, image.sha256 if image is not None else None),
    }


def predictions_busy(limit: int) -> Unavailable:
    return Unavailable(f'Too many "try one image" requests at once ({limit} run at a time); retry shortly',
                       retry_after_s=BUSY_RETRY_AFTER_S)


def predict_one(checkpoint: str, path: str, gpu_fraction: float, timeout_s: float) -> dict:
    """Predict one image as a Ray task; wait at most `timeout_s` for it (it may not get a CPU or GPU share
    while training holds them), then cancel it and answer 503 with Retry-After."""
    import ray
    from ray.exceptions import GetTimeoutError

    from ray_jobs.evaluate import predict_resources, predict_task

    ref = predict_task.options(**predict_resources(gpu_fraction)).remote(checkpoint, [path], gpu_fraction)
    try:
        return ray.get(ref, timeout=timeout_s)[0]
    except GetTimeoutError:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or gone
            pass
        raise Unavailable(
            f"The prediction did not finish within {timeout_s:g} s: the cluster has no free CPU or GPU share "
            "for it (a training run may hold them); retry later", retry_after_s=TIMEOUT_RETRY_AFTER_S,
        ) from None


def launch(db_url: str, workspace_root: str, evaluation_id: str, gpu_fraction: float) -> None:
    """Runner job (evaluation lane): run the evaluation as a Ray task and wait for it."""
    import ray

    from ray_jobs.evaluate import evaluation_task, task_resources

    try:
        ref = evaluation_task.options(**task_resources(gpu_fraction)).remote(db_url, workspace_root, evaluation_id, gpu_fraction)
        with ray_tasks.tracked(evaluation_id, ref):
            ray.get(ref)
    except Exception as exc:
        evaluations.fail(db_url, evaluation_id, f"The evaluation task died: {exc}")


def recover_evaluations(app) -> None:
    """At start-up: evaluations cut off mid-run failed; queued ones run again, in order."""
    settings = app.state.settings
    with session_scope(settings.db_url) as s:
        queued = evaluations.recover(s)
    for evaluation_id in queued:
        app.state.runner.submit("evaluation", launch, settings.db_url, str(settings.workspace), evaluation_id,
                                settings.eval_gpu_fraction)
