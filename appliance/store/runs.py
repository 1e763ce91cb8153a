"""Training runs: the one training slot, claiming a run, its life (running, heartbeat, epochs,
finish), reaping runs whose process died, the run's files, and its samples.

Used by the web side (claim, reap) and by the run driver on Ray (`ray_jobs.train`) alike, so a
run started from the UI and one from `ray job submit` look the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.errors import Conflict, ValidationFailed
from appliance.store.paths import Workspace
from appliance.store.status import ACTIVE, JobStatus
from appliance.store.tables import EpochRecord, Experiment, Image, Lock, SplitAssignment, utcnow

TRAINING_LOCK = "training"
HEARTBEAT_EVERY_S = 5
STALE_AFTER = timedelta(seconds=45)
ALREADY_TRAINING = "An experiment is already training"


# ---------------------------------------------------------------- the training slot

def acquire_slot(session: Session, experiment_id: str) -> None:
    """Take the one training slot atomically (a row insert), or raise 409. Re-entrant per run."""
    try:
        _take_slot(session, experiment_id)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(ALREADY_TRAINING) from None


def _take_slot(session: Session, experiment_id: str) -> None:
    """The slot row, in the session's transaction (the insert may raise IntegrityError at flush)."""
    holder = session.get(Lock, TRAINING_LOCK)
    if holder is not None:
        if holder.holder == experiment_id:
            return
        raise Conflict(ALREADY_TRAINING)
    session.add(Lock(name=TRAINING_LOCK, holder=experiment_id))
    session.flush()


def release_slot(session: Session, experiment_id: str) -> None:
    session.execute(delete(Lock).where(Lock.name == TRAINING_LOCK, Lock.holder == experiment_id))
    session.commit()


def claim(session: Session, exp: Experiment, params: dict | None = None, before_queued=None) -> None:
    """Queue the run and take the slot in one transaction, or raise 409 and change nothing. The
    status change is one conditional UPDATE (not active → queued), so of two starts of the same run
    racing here only one succeeds; the slot's primary key decides between different runs.
    `before_queued(id)` runs once the claim is won, before the run shows as `queued` (the event bus
    forgets the previous attempt there, so a stop asked for the queued run survives)."""
    values = {"status": JobStatus.QUEUED, "error": None, "heartbeat_at": utcnow()}
    if params is not None:
        values["params"] = params
    try:
        won = session.execute(
            update(Experiment).where(Experiment.id == exp.id, Experiment.status.not_in(ACTIVE)).values(**values)
        ).rowcount
        if won != 1:
            raise Conflict(f"Experiment {exp.id} is already queued or training")
        _take_slot(session, exp.id)
        if before_queued is not None:
            before_queued(exp.id)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(ALREADY_TRAINING) from None
    except BaseException:
        session.rollback()
        raise
    session.refresh(exp)


# ---------------------------------------------------------------- the run's life (the driver's side)

@dataclass(frozen=True)
class RunPlan:
    """What the driver needs of a run, as plain values."""

    project_id: str
    model: str
    params: dict
    class_names: list[str]
    status: str
    run_dir: Path
    log_file: Path


def plan(db_url: str, workspace: Workspace, experiment_id: str) -> RunPlan | None:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            return None
        return RunPlan(exp.project_id, exp.model, dict(exp.params), list(exp.class_names), exp.status,
                       run_dir(workspace, exp), log_path(workspace, exp))


def mark_running(db_url: str, experiment_id: str, job_id: str | None, resume: bool) -> None:
    """The claimed run starts. It checks that it still holds the slot (re-entrant; it takes the slot
    back if a reaper freed it meanwhile, and a 409 leaves the run as it was when another run has it)."""
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        acquire_slot(s, experiment_id)
        exp.status, exp.error, exp.job_id = JobStatus.RUNNING, None, job_id
        exp.started_at, exp.heartbeat_at, exp.finished_at = utcnow(), utcnow(), None
        if not resume:
            s.execute(delete(EpochRecord).where(EpochRecord.experiment_id == experiment_id))
            exp.epochs_done, exp.best_metric = 0, None


def heartbeat(db_url: str, experiment_id: str) -> None:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if exp is not None:
            exp.heartbeat_at = utcnow()


def record_epoch(db_url: str, experiment_id: str, event: dict) -> None:
    with session_scope(db_url) as s:
        s.merge(EpochRecord(experiment_id=experiment_id, epoch=int(event["epoch"]), metrics=event))
        exp = s.get(Experiment, experiment_id)
        exp.epochs_done = max(exp.epochs_done, int(event["epoch"]))
        metric = event.get("val_metric")
        if metric is not None and metric == metric and (exp.best_metric is None or metric > exp.best_metric):
            exp.best_metric = float(metric)
        exp.heartbeat_at = utcnow()


def epochs_done(db_url: str, experiment_id: str) -> int:
    with session_scope(db_url) as s:
        return s.get(Experiment, experiment_id).epochs_done


def is_active(db_url: str, experiment_id: str) -> bool:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        return exp is not None and exp.status in ACTIVE


def finish(db_url: str, experiment_id: str, status: JobStatus, error: str | None = None) -> dict:
    """End the run and free the slot; `{"status", "best_metric", "error"}` as plain values."""
    status = JobStatus(status)
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            return {"status": status.value, "best_metric": None}
        exp.status, exp.error, exp.finished_at = status, error, utcnow()
        release_slot(s, experiment_id)
        return {"status": status.value, "best_metric": exp.best_metric, "error": error}


def reap_stale_runs(db_url: str, now: datetime | None = None, ray_started_at: datetime | None = None) -> list[str]:
    """Runs whose driver stopped heart-beating died with their process: mark them `interrupted`
    (resumable from the last checkpoint) and free the slot. Called at start-up and periodically.
    With `ray_started_at` (start-up), a run last heard of before the current Ray cluster came up
    cannot be running in it: it is interrupted at once, without waiting for the heartbeat timeout."""
    now = now or utcnow()
    reaped = []
    with session_scope(db_url) as s:
        for exp in s.scalars(select(Experiment).where(Experiment.status.in_(ACTIVE))):
            beat = exp.heartbeat_at
            if beat is not None and ray_started_at is not None and beat < ray_started_at:
                exp.error = "The server restarted during this run, which ended with it; resume to continue"
            elif beat is None or now - beat > STALE_AFTER:
                exp.error = "The training process stopped responding (server or job died); resume to continue"
            else:
                continue
            exp.status, exp.finished_at = JobStatus.INTERRUPTED, now
            reaped.append(exp.id)
        for exp_id in reaped:
            s.execute(delete(Lock).where(Lock.name == TRAINING_LOCK, Lock.holder == exp_id))
        # A slot held by a run that is no longer active is stale too.
        lock = s.get(Lock, TRAINING_LOCK)
        if lock is not None:
            holder = s.get(Experiment, lock.holder)
            if holder is None or holder.status not in ACTIVE:
                s.delete(lock)
    return reaped


# ---------------------------------------------------------------- files and samples

def run_dir(workspace: Workspace, exp: Experiment) -> Path:
    return workspace.experiment_dir(exp.project_id, exp.id)


def log_path(workspace: Workspace, exp: Experiment) -> Path:
    return run_dir(workspace, exp) / "train.log"


def checkpoint_path(workspace: Workspace, exp: Experiment, which: str) -> Path:
    return run_dir(workspace, exp) / "weights" / f"{which}.ckpt"


def trained_checkpoint(workspace: Workspace, exp: Experiment, which: str) -> Path:
    """The run's `best` or `last` checkpoint file; a clear 422 when it was never trained."""
    path = checkpoint_path(workspace, exp, which)
    if not path.is_file():
        raise ValidationFailed(
            f"experiment_id: experiment {exp.id} has no {which} checkpoint yet (status {exp.status}); train it first"
        )
    return path


def subset_images(session: Session, split_id: str, subset: str) -> list[Image]:
    """The images of one subset, in a stable order (used by training and evaluation)."""
    return list(session.scalars(
        select(Image).join(SplitAssignment, SplitAssignment.image_id == Image.id)
        .where(SplitAssignment.split_id == split_id, SplitAssignment.subset == subset).order_by(Image.id)
    ))


def subset_samples(session: Session, workspace: Workspace, exp: Experiment, subset: str) -> list[dict]:
    """One subset's images as plain dicts for the Ray-free core, with truth as class indices of the
    experiment (images of classes it was not trained on are left out). The one place that turns
    dataset rows into training / evaluation / export samples."""
    index = {name: i for i, name in enumerate(exp.class_names)}
    images_dir = workspace.images_dir(exp.project_id)
    samples = []
    for image in subset_images(session, exp.split_id, subset):
        item = {"image_id": image.id, "filename": image.filename, "path": str(images_dir / image.filename),
                "width": image.width, "height": image.height}
        if exp.params.get("task") == "classification":
            if image.label not in index:
                continue
            item["label"] = index[image.label]
        else:
            boxes = [b for b in image.boxes if b.label in index]
            item["boxes"] = [[b.x1, b.y1, b.x2, b.y2] for b in boxes]
            item["labels"] = [index[b.label] for b in boxes]
        samples.append(item)
    return samples


def load_run_inputs(session: Session, workspace: Workspace, exp: Experiment) -> tuple[list[dict], list[dict]]:
    """Train and val samples of a run."""
    train = subset_samples(session, workspace, exp, "train")
    val = subset_samples(session, workspace, exp, "val")
    if not train or not val:
        raise ValidationFailed(f"split {exp.split_id} has no usable train or val images any more")
    return train, val


def run_inputs(db_url: str, workspace: Workspace, experiment_id: str) -> tuple[list[dict], list[dict]]:
    with session_scope(db_url) as s:
        return load_run_inputs(s, workspace, s.get(Experiment, experiment_id))


def active_runs(db_url: str, launched_by_ui: bool = False) -> list[str]:
    """Ids of the queued and running runs; with `launched_by_ui`, only running ones the appliance launched
    (not `ray job submit` runs, which live on without it)."""
    with session_scope(db_url) as s:
        query = select(Experiment.id).where(Experiment.status.in_(ACTIVE))
        if launched_by_ui:
            query = select(Experiment.id).where(Experiment.status == JobStatus.RUNNING, Experiment.job_id == "ui")
        return list(s.scalars(query))


def interrupt_runs(db_url: str, experiment_ids: list[str], reason: str) -> list[str]:
    """The appliance stopped while these runs trained: they went down with it, however their driver ended
    (killed with its owner it may have recorded `failed`). Mark each `interrupted` — resumable, epochs kept —
    unless it completed, and free the slot."""
    if not experiment_ids:
        return []
    with session_scope(db_url) as s:
        cut = list(s.scalars(select(Experiment.id).where(Experiment.id.in_(experiment_ids),
                                                         Experiment.status != JobStatus.COMPLETED)))
        s.execute(update(Experiment).where(Experiment.id.in_(cut))
                  .values(status=JobStatus.INTERRUPTED, error=reason, finished_at=utcnow()))
        s.execute(delete(Lock).where(Lock.name == TRAINING_LOCK, Lock.holder.in_(experiment_ids)))
    return cut
