"""Training runs: the one training slot, claiming a run, its life (running, heartbeat, epochs,
finish), reaping runs whose process died, the run's files, and its samples.

Used by the web side (claim, reap) and by the run driver on Ray (`ray_jobs.train`) alike, so a
run started from the UI and one from `ray job submit` look the same.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
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


def claim(session: Session, exp: Experiment, params: dict | None = None, before_queued=None) -> str:
    """Queue the run and take the slot in one transaction, or raise 409 and change nothing; return
    the claim id. The status change is one conditional UPDATE (not active → queued, with a fresh
    claim id), so of two starts of the same run racing here only one succeeds; the slot's primary
    key decides between different runs. The driver launched for this claim passes the claim id to
    `mark_running`, which refuses a record claimed again since (or no longer queued).
    `before_queued(id)` runs once the claim is won, before the run shows as `queued` (the event bus
    forgets the previous attempt there, so a stop asked for the queued run survives)."""
    claim_id = secrets.token_hex(8)
    values = {"status": JobStatus.QUEUED, "error": None, "heartbeat_at": utcnow(), "claim_id": claim_id,
              "ray_driver": None}
    if params is not None:
        values["params"] = params
    try:
        won = session.execute(
            update(Experiment).where(Experiment.id == exp.id, Experiment.status.not_in(ACTIVE)).values(**values)
        ).rowcount
        if won != 1:
            session.rollback()
            raise Conflict(already_active(exp.id, session.scalar(select(Experiment.status).where(Experiment.id == exp.id))))
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
    return claim_id


def already_active(experiment_id: str, status: str | None) -> str:
    if status in ACTIVE:
        return f"Experiment {experiment_id} is already {status}; wait for it to end or stop it first"
    return f"Experiment {experiment_id} is being started by another request"


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
    claim_id: str | None = None


def plan(db_url: str, workspace: Workspace, experiment_id: str) -> RunPlan | None:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            return None
        return RunPlan(exp.project_id, exp.model, dict(exp.params), list(exp.class_names), exp.status,
                       run_dir(workspace, exp), log_path(workspace, exp), exp.claim_id)


def mark_running(db_url: str, experiment_id: str, claim_id: str, job_id: str | None, resume: bool,
                 ray_driver: str | None = None) -> None:
    """The claimed run starts: one conditional UPDATE moves it queued → running only while it still
    holds `claim_id`; a record claimed again since, stopped, reaped or deleted is refused with a 409
    and left as it is. It also checks the training slot (re-entrant; it takes the slot back if a
    reaper freed it meanwhile, and a 409 leaves the run as it was when another run has it)."""
    with session_scope(db_url) as s:
        now = utcnow()
        won = s.execute(
            update(Experiment)
            .where(Experiment.id == experiment_id, Experiment.status == JobStatus.QUEUED, Experiment.claim_id == claim_id)
            .values(status=JobStatus.RUNNING, error=None, job_id=job_id, ray_driver=ray_driver, started_at=now,
                    heartbeat_at=now, finished_at=None, **({} if resume else {"run_seconds": 0.0}))
        ).rowcount
        if won != 1:
            s.rollback()
            exp = s.get(Experiment, experiment_id)
            state = "deleted" if exp is None else exp.status
            raise Conflict(f"Experiment {experiment_id} is {state}, no longer the queued run this driver was "
                           "started for; it was left as it is")
        try:
            _take_slot(s, experiment_id)
        except IntegrityError:
            raise Conflict(ALREADY_TRAINING) from None
        if not resume:
            s.execute(delete(EpochRecord).where(EpochRecord.experiment_id == experiment_id))
            s.execute(update(Experiment).where(Experiment.id == experiment_id).values(epochs_done=0, best_metric=None))


def _end_attempt(exp: Experiment, status: JobStatus | str, error: str | None, now: datetime) -> None:
    """The run's current attempt ends: add the time it trained to `run_seconds` (a queued attempt
    trained none), so the run's duration keeps counting across resumes."""
    if exp.status == JobStatus.RUNNING and exp.started_at is not None:
        exp.run_seconds = (exp.run_seconds or 0.0) + max(0.0, (now - exp.started_at).total_seconds())
    exp.status, exp.error, exp.finished_at = status, error, now


def duration_seconds(exp: Experiment, now: datetime | None = None) -> float | None:
    """Seconds the run has trained, over all its attempts (resumes included): the ended attempts'
    `run_seconds`, plus the running attempt's time so far. None: it never ran."""
    if exp.started_at is None:
        return None
    total = exp.run_seconds or 0.0
    if exp.status == JobStatus.RUNNING:
        total += max(0.0, ((now or utcnow()) - exp.started_at).total_seconds())
    elif not total and exp.finished_at is not None:  # ended before run_seconds was recorded
        total = max(0.0, (exp.finished_at - exp.started_at).total_seconds())
    return total


def _holds(exp: Experiment | None, claim_id: str | None) -> bool:
    """Whether a driver (or worker) of `claim_id` may still write to the run; None: not checked."""
    return exp is not None and (claim_id is None or exp.claim_id == claim_id)


def heartbeat(db_url: str, experiment_id: str, claim_id: str | None = None) -> None:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if _holds(exp, claim_id) and exp.status in ACTIVE:
            exp.heartbeat_at = utcnow()


def record_epoch(db_url: str, experiment_id: str, event: dict, claim_id: str | None = None) -> None:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if not _holds(exp, claim_id):
            return  # a worker of an older claim: not this run's history any more
        s.merge(EpochRecord(experiment_id=experiment_id, epoch=int(event["epoch"]), metrics=event))
        exp.epochs_done = max(exp.epochs_done, int(event["epoch"]))
        metric = event.get("val_metric")
        if metric is not None and metric == metric and (exp.best_metric is None or metric > exp.best_metric):
            exp.best_metric = float(metric)
        exp.heartbeat_at = utcnow()


def rewind(db_url: str, experiment_id: str, epoch: int, claim_id: str | None = None) -> list[int]:
    """A resume continues from a checkpoint of `epoch`: forget recorded epochs after it (they are
    trained again) and recompute `epochs_done` and `best_metric`; return the epochs forgotten."""
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if not _holds(exp, claim_id):
            return []
        rows = list(s.scalars(select(EpochRecord).where(EpochRecord.experiment_id == experiment_id)))
        dropped = sorted(r.epoch for r in rows if r.epoch > epoch)
        kept = [r.metrics.get("val_metric") for r in rows if r.epoch <= epoch]
        kept = [float(m) for m in kept if m is not None and m == m]
        s.execute(delete(EpochRecord).where(EpochRecord.experiment_id == experiment_id, EpochRecord.epoch > epoch))
        exp.epochs_done = min(exp.epochs_done, epoch)
        exp.best_metric = max(kept) if kept else None
        return dropped


def epochs_done(db_url: str, experiment_id: str) -> int:
    with session_scope(db_url) as s:
        return s.get(Experiment, experiment_id).epochs_done


def is_active(db_url: str, experiment_id: str) -> bool:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        return exp is not None and exp.status in ACTIVE


def finish(db_url: str, experiment_id: str, status: JobStatus, error: str | None = None,
           claim_id: str | None = None) -> dict:
    """End the run and free the slot; `{"status", "best_metric", "error"}` as plain values. With
    `claim_id`, a run claimed again since is left alone (its outcome is returned unchanged)."""
    status = JobStatus(status)
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            return {"status": status.value, "best_metric": None}
        if not _holds(exp, claim_id):
            return {"status": exp.status, "best_metric": exp.best_metric, "error": exp.error}
        _end_attempt(exp, status, error, utcnow())
        release_slot(s, experiment_id)
        return {"status": status.value, "best_metric": exp.best_metric, "error": error}


def reap_stale_runs(db_url: str, now: datetime | None = None, ray_started_at: datetime | None = None,
                    driver_alive: Callable[[str], bool | None] | None = None) -> list[str]:
    """Runs whose driver died: mark them `interrupted` (resumable from the last checkpoint) and
    free the slot. Called at start-up and periodically. In order:
    - with `ray_started_at` (start-up), a run last heard of before the current Ray cluster came up
      cannot be running in it: interrupted at once;
    - with `driver_alive(ray_driver)` (asks Ray about the job or task recorded by `mark_running`),
      a run whose driver Ray reports ended is interrupted at once; None means Ray does not know;
    - otherwise a run whose heartbeat is older than STALE_AFTER."""
    now = now or utcnow()
    candidates: dict[str, tuple[datetime | None, str | None]] = {}
    with session_scope(db_url) as s:
        for exp in s.scalars(select(Experiment).where(Experiment.status.in_(ACTIVE))):
            candidates[exp.id] = (exp.heartbeat_at, exp.ray_driver)
    # Ray is asked outside any transaction (it may take a moment); the record is re-checked below.
    verdicts: dict[str, str] = {}
    for exp_id, (beat, driver) in candidates.items():
        if beat is not None and ray_started_at is not None and beat < ray_started_at:
            verdicts[exp_id] = "The server restarted during this run, which ended with it; resume to continue"
        elif driver and driver_alive is not None and driver_alive(driver) is False:
            verdicts[exp_id] = f"Ray reports the run's driver ({driver}) has ended; resume to continue"
        elif beat is None or now - beat > STALE_AFTER:
            verdicts[exp_id] = "The training process stopped responding (server or job died); resume to continue"
    reaped = []
    with session_scope(db_url) as s:
        for exp_id, reason in verdicts.items():
            exp = s.get(Experiment, exp_id)
            if exp is None or exp.status not in ACTIVE or (exp.heartbeat_at, exp.ray_driver) != candidates[exp_id]:
                continue  # ended, or moved on (a new claim, a fresh heartbeat) while Ray was asked
            _end_attempt(exp, JobStatus.INTERRUPTED, reason, now)
            reaped.append(exp_id)
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
                "width": image.width, "height": image.height, "sha256": image.sha256}
        if exp.params.get("task") == "classification":
            if image.label not in index:
                continue
            item["label"] = index[image.label]
        else:
            boxes = [b for b in image.boxes if b.label in index]
            item["boxes"] = [[b.x1, b.y1, b.x2, b.y2] for b in boxes]
            item["labels"] = [index[b.label] for b in boxes]
            item["difficult"] = [bool(b.difficult) for b in boxes]  # evaluation ignores these; training uses them
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
        cut = list(s.scalars(select(Experiment).where(Experiment.id.in_(experiment_ids),
                                                      Experiment.status != JobStatus.COMPLETED)))
        now = utcnow()
        for exp in cut:
            _end_attempt(exp, JobStatus.INTERRUPTED, reason, now)
        cut = [exp.id for exp in cut]
        s.execute(delete(Lock).where(Lock.name == TRAINING_LOCK, Lock.holder.in_(experiment_ids)))
    return cut
