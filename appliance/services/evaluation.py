"""Evaluations: requests, records, per-sample results. The work runs as a fractional-GPU Ray
task (`ray_jobs.evaluate`); several may run at once (the runner's evaluation lane)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.errors import Conflict, ValidationFailed
from appliance.store.ids import new_id
from appliance.store.tables import EvalSample, Evaluation, Experiment, utcnow
from appliance.store.paths import Workspace
from appliance.schemas import StrictBody
from appliance.services.projects import get_owned, get_project
from appliance.services.splits import subset_images
from appliance.services.training import get_experiment, run_dir, subset_samples

log = logging.getLogger("aistudio.evaluation")
ACTIVE = ("queued", "running")


class EvaluationRun(StrictBody):
    project_id: str
    experiment_id: str
    subset: Literal["test", "val"] = "test"
    checkpoint: Literal["best", "last"] = "best"


def checkpoint_path(workspace: Workspace, exp: Experiment, which: str) -> Path:
    return run_dir(workspace, exp) / "weights" / f"{which}.ckpt"


def trained_checkpoint(session: Session, workspace: Workspace, project_id: str, experiment_id: str, which: str) -> tuple[Experiment, Path]:
    """The experiment and its checkpoint file; a clear 422 when it was never trained."""
    exp = get_experiment(session, project_id, experiment_id)
    path = checkpoint_path(workspace, exp, which)
    if not path.is_file():
        raise ValidationFailed(
            f"experiment_id: experiment {experiment_id} has no {which} checkpoint yet (status {exp.status}); train it first"
        )
    return exp, path


def check_request(session: Session, workspace: Workspace, body: EvaluationRun) -> int:
    """Validate an evaluation request without writing anything; returns the subset's image count."""
    exp, _ = trained_checkpoint(session, workspace, body.project_id, body.experiment_id, body.checkpoint)
    count = len(subset_images(session, exp.split_id, body.subset))
    if not count:
        raise ValidationFailed(f"subset: split {exp.split_id} has no {body.subset} images; choose another subset or split")
    return count


def request_evaluation(session: Session, workspace: Workspace, body: EvaluationRun) -> Evaluation:
    count = check_request(session, workspace, body)
    evaluation = Evaluation(id=new_id("evaluation"), project_id=body.project_id, experiment_id=body.experiment_id,
                            subset=body.subset, checkpoint=body.checkpoint, status="queued", total=count)
    session.add(evaluation)
    session.commit()
    return evaluation


def get_evaluation(session: Session, project_id: str, evaluation_id: str) -> Evaluation:
    return get_owned(session, Evaluation, "evaluation", project_id, evaluation_id)


def evaluation_public(session: Session, ev: Evaluation, with_metrics: bool = True) -> dict:
    exp = session.get(Experiment, ev.experiment_id)
    data = {
        "id": ev.id, "project_id": ev.project_id, "experiment_id": ev.experiment_id,
        "experiment_name": exp.name if exp else None, "model": exp.model if exp else None,
        "subset": ev.subset, "checkpoint": ev.checkpoint, "status": ev.status, "done": ev.done, "total": ev.total,
        "error": ev.error, "created_at": ev.created_at, "finished_at": ev.finished_at,
        "headline": headline(ev.metrics),
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


def delete_evaluation(session: Session, workspace: Workspace, project_id: str, evaluation_id: str) -> None:
    ev = get_evaluation(session, project_id, evaluation_id)
    if ev.status in ACTIVE:
        raise Conflict(f"Evaluation {evaluation_id} is {ev.status}; wait for it to finish before deleting it")
    session.delete(ev)
    session.commit()


def list_samples(session: Session, project_id: str, evaluation_id: str, kind: str, label: str | None,
                 cell: tuple[int, int] | None, offset: int, limit: int) -> tuple[list[dict], int]:
    ev = get_evaluation(session, project_id, evaluation_id)
    query = select(EvalSample).where(EvalSample.evaluation_id == ev.id)
    if kind == "errors":
        query = query.where(EvalSample.is_error.is_(True))
    detection = (ev.metrics or {}).get("task") == "detection"
    if label and not detection:
        query = query.where(EvalSample.label == label)
    rows = list(session.scalars(query.order_by(EvalSample.rank)))
    if label and detection:  # an image belongs to every class among its true or predicted boxes
        names = ev.metrics["confusion_matrix"]["labels"]
        index = names.index(label) if label in names else -1
        rows = [r for r in rows if index in r.payload["gt"]["labels"] or index in r.payload["pred"]["labels"]]
    if cell is not None:  # confusion-matrix cell: [truth, prediction]
        rows = [r for r in rows if _in_cell(r.payload, cell)]
    total = len(rows)
    return [_sample_public(project_id, r) for r in rows[offset:offset + limit]], total


def _in_cell(payload: dict, cell: tuple[int, int]) -> bool:
    if "cell" in payload:
        return tuple(payload["cell"]) == cell
    return list(cell) in payload.get("cells", [])


def _sample_public(project_id: str, row: EvalSample) -> dict:
    filename = row.payload.get("filename")
    return {
        "image_id": row.image_id, "rank": row.rank, "is_error": row.is_error, "label": row.label, **row.payload,
        "url": f"/api/datasets/{project_id}/image/{filename}",
        "thumbnail_url": f"/api/datasets/{project_id}/thumbnail/{filename}",
    }


# ---------------------------------------------------------------- used by the Ray-side job

def evaluation_inputs(db_url: str, workspace: Workspace, evaluation_id: str) -> dict:
    """Everything the task needs, as plain values: checkpoint, class names and the samples with truth."""
    with session_scope(db_url) as s:
        ev = s.get(Evaluation, evaluation_id)
        exp = s.get(Experiment, ev.experiment_id)
        return {
            "task": exp.params.get("task"), "class_names": list(exp.class_names),
            "checkpoint": str(checkpoint_path(workspace, exp, ev.checkpoint)),
            "samples": subset_samples(s, workspace, exp, ev.subset),
        }


def set_progress(db_url: str, evaluation_id: str, done: int, total: int, status: str = "running") -> None:
    with session_scope(db_url) as s:
        ev = s.get(Evaluation, evaluation_id)
        ev.done, ev.total, ev.status = done, total, status


def save_results(db_url: str, evaluation_id: str, metrics: dict, records: list[dict], samples: list[dict]) -> None:
    by_index = {i: sample for i, sample in enumerate(samples)}
    class_names = metrics.get("confusion_matrix", {}).get("labels", [])
    rows = []
    for rank, record in enumerate(records):
        sample = by_index[record["index"]]
        if "true_name" in record:
            label = record["true_name"]
        else:
            labels = record["gt"]["labels"]
            label = class_names[labels[0]] if labels else None
        rows.append({"evaluation_id": evaluation_id, "image_id": sample["image_id"], "rank": rank,
                     "is_error": bool(record["is_error"]), "label": label,
                     "payload": {**record, "filename": sample["filename"], "width": sample["width"],
                                 "height": sample["height"]}})
    with session_scope(db_url) as s:
        if rows:
            s.execute(insert(EvalSample), rows)
        ev = s.get(Evaluation, evaluation_id)
        ev.metrics, ev.status, ev.done, ev.finished_at = metrics, "completed", len(samples), utcnow()


def fail(db_url: str, evaluation_id: str, reason: str) -> None:
    with session_scope(db_url) as s:
        ev = s.get(Evaluation, evaluation_id)
        if ev is not None:
            ev.status, ev.error, ev.finished_at = "failed", reason[-2000:], utcnow()


def launch(db_url: str, workspace_root: str, evaluation_id: str, gpu_fraction: float) -> None:
    """Runner job (evaluation lane): run the evaluation as a Ray task and wait for it."""
    import ray

    from ray_jobs.evaluate import evaluation_task, task_resources

    try:
        ray.get(evaluation_task.options(**task_resources(gpu_fraction)).remote(db_url, workspace_root, evaluation_id, gpu_fraction))
    except Exception as exc:
        fail(db_url, evaluation_id, f"The evaluation task died: {exc}")


def recover_evaluations(app) -> None:
    """At start-up: evaluations cut off mid-run failed (their per-sample rows are written with the
    result, in one transaction, so none exist); queued ones run again, in order."""
    settings = app.state.settings
    with session_scope(settings.db_url) as s:
        for ev in s.scalars(select(Evaluation).where(Evaluation.status == "running")):
            ev.status, ev.finished_at = "failed", utcnow()
            ev.error = "The server stopped during this evaluation; run it again"
        queued = list(s.scalars(select(Evaluation.id).where(Evaluation.status == "queued").order_by(Evaluation.created_at)))
    for evaluation_id in queued:
        app.state.runner.submit("evaluation", launch, settings.db_url, str(settings.workspace), evaluation_id,
                                settings.eval_gpu_fraction)
