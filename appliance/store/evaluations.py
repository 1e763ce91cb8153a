"""The evaluation record's state changes: queue, progress, results, failure, start-up recovery."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.ids import new_id
from appliance.store.paths import Workspace
from appliance.store.errors import ValidationFailed
from appliance.store.runs import checkpoint_path, subset_images, subset_samples, trained_checkpoint
from appliance.store.records import move_status
from appliance.store.status import JobStatus
from appliance.store.tables import EvalSample, EvalSampleCell, EvalSampleClass, Evaluation, Experiment, utcnow

INTERRUPTED_MESSAGE = "The server stopped during this evaluation; run it again"
CANCELLED_MESSAGE = "Cancelled: what it evaluated was deleted"


def check(session: Session, workspace: Workspace, exp: Experiment, subset: str, checkpoint: str) -> int:
    """What an evaluation needs before it is queued: the checkpoint, and images in the subset
    (their count is returned)."""
    trained_checkpoint(workspace, exp, checkpoint)
    count = len(subset_images(session, exp.split_id, subset))
    if not count:
        raise ValidationFailed(f"subset: split {exp.split_id} has no {subset} images; choose another subset or split")
    return count


def queue(session: Session, project_id: str, experiment_id: str, subset: str, checkpoint: str, total: int) -> Evaluation:
    evaluation = Evaluation(id=new_id("evaluation"), project_id=project_id, experiment_id=experiment_id,
                            subset=subset, checkpoint=checkpoint, status=JobStatus.QUEUED, total=total)
    session.add(evaluation)
    session.commit()
    return evaluation


def start(db_url: str, evaluation_id: str) -> bool:
    """queued → running, only if nobody cancelled it meanwhile."""
    with session_scope(db_url) as s:
        return move_status(s, Evaluation, evaluation_id, JobStatus.QUEUED, status=JobStatus.RUNNING)


def cancel_queued(session: Session, evaluation_id: str) -> bool:
    """queued → failed (cancelled) before it starts; False when it is no longer queued."""
    return move_status(session, Evaluation, evaluation_id, JobStatus.QUEUED,
                       status=JobStatus.FAILED, error=CANCELLED_MESSAGE, finished_at=utcnow())


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


def set_progress(db_url: str, evaluation_id: str, done: int, total: int,
                 status: JobStatus = JobStatus.RUNNING) -> None:
    """Progress of a running evaluation; a record that was cancelled or deleted is left alone."""
    with session_scope(db_url) as s:
        ev = s.get(Evaluation, evaluation_id)
        if ev is not None and ev.status == JobStatus.RUNNING:
            ev.done, ev.total, ev.status = done, total, status


def save_results(db_url: str, evaluation_id: str, metrics: dict, records: list[dict], samples: list[dict]) -> None:
    """The metrics and the ranked per-sample rows, in one transaction with the `completed` status."""
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
    cells, classes = [], []
    for row in rows:
        found_cells, found_classes = sample_keys(row["payload"])
        key = {"evaluation_id": evaluation_id, "image_id": row["image_id"]}
        cells += [{**key, "truth": t, "pred": p} for t, p in found_cells]
        classes += [{**key, "class_index": c} for c in found_classes]
    with session_scope(db_url) as s:
        if rows:
            s.execute(insert(EvalSample), rows)
        if cells:
            s.execute(insert(EvalSampleCell), cells)
        if classes:
            s.execute(insert(EvalSampleClass), classes)
        ev = s.get(Evaluation, evaluation_id)
        ev.metrics, ev.status, ev.done, ev.finished_at = metrics, JobStatus.COMPLETED, len(samples), utcnow()


def sample_keys(payload: dict) -> tuple[set[tuple[int, int]], set[int]]:
    """What the sample filters match in SQL (issue #14 item 2): its confusion-matrix cells (truth,
    prediction) — one for classification, every matched / missed / spurious pair for detection — and,
    for detection, the class indices of its true and predicted boxes."""
    if "cell" in payload:
        cells = {tuple(payload["cell"])} if payload["cell"] is not None else set()
    else:
        cells = {tuple(c) for c in payload.get("cells") or []}
    classes = set()
    if isinstance(payload.get("gt"), dict) or isinstance(payload.get("pred"), dict):  # detection
        classes = set(_boxes(payload, "gt") or []) | set(_boxes(payload, "pred") or [])
    return {(int(t), int(p)) for t, p in cells}, {int(c) for c in classes}


def _boxes(payload: dict, key: str) -> list:
    value = payload.get(key)
    return value.get("labels") or [] if isinstance(value, dict) else []


def fail(db_url: str, evaluation_id: str, reason: str) -> None:
    with session_scope(db_url) as s:
        ev = s.get(Evaluation, evaluation_id)
        if ev is not None:
            ev.status, ev.error, ev.finished_at = JobStatus.FAILED, reason[-2000:], utcnow()


def recover(session: Session) -> list[str]:
    """At start-up: evaluations cut off mid-run failed (their per-sample rows are written with the
    result, in one transaction, so none exist). Returns the queued ones, in order."""
    for ev in session.scalars(select(Evaluation).where(Evaluation.status == JobStatus.RUNNING)):
        ev.status, ev.finished_at = JobStatus.FAILED, utcnow()
        ev.error = INTERRUPTED_MESSAGE
    queued = session.scalars(
        select(Evaluation.id).where(Evaluation.status == JobStatus.QUEUED).order_by(Evaluation.created_at)
    )
    return list(queued)
