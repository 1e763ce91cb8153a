"""Experiments and training runs: validation, the one-at-a-time slot, run bookkeeping, liveness.

A run is driven by `ray_jobs.train.run_training` — from the UI (a zero-CPU Ray task launched
by the runner's training lane) or from `ray job submit`. Both use the functions here to take
the training slot, mark the run, record epochs and finish it, so they look the same in the UI.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.errors import Conflict, ValidationFailed
from appliance.store.ids import new_id
from appliance.store.tables import EpochRecord, Experiment, Lock, utcnow
from appliance.store.paths import Workspace
from appliance.schemas import StrictBody
from appliance.services.projects import get_owned, get_project
from appliance.services.splits import BACKGROUND, get_split, subset_images

log = logging.getLogger("aistudio.training")

TRAINING_LOCK = "training"
ACTIVE = ("queued", "running")
TERMINAL = ("completed", "failed", "stopped", "interrupted")
HEARTBEAT_EVERY_S = 5
STALE_AFTER = timedelta(seconds=45)
ALREADY_TRAINING = "An experiment is already training"


class ExperimentCreate(StrictBody):
    name: str = Field(min_length=1, max_length=200)
    split_id: str
    model: str = Field(min_length=1, max_length=100)
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1, le=1024)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    image_size: int | None = Field(default=None, ge=32, le=2048)
    augmentations: list[str] = Field(default_factory=lambda: ["hflip"], max_length=10)
    pretrained: bool = False
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    early_stopping_patience: int | None = Field(default=None, ge=1, le=1000)
    mixed_precision: bool = True
    class_weighted_loss: bool = False


class RunRequest(StrictBody):
    project_id: str
    experiment_id: str
    resume: bool = False
    epochs: int | None = Field(default=None, ge=1, le=1000, description="With resume: a new total, to extend a run")


# ---------------------------------------------------------------- catalog and experiments

def catalog(task: str | None) -> list[dict]:
    from ray_jobs.core.catalog import list_models

    try:
        return list_models(task)
    except ValueError as exc:
        raise ValidationFailed(f"task: {exc}") from exc


def get_experiment(session: Session, project_id: str, experiment_id: str) -> Experiment:
    return get_owned(session, Experiment, "experiment", project_id, experiment_id)


def experiment_public(session: Session, exp: Experiment, with_history: bool = False) -> dict:
    data = {
        "id": exp.id, "project_id": exp.project_id, "split_id": exp.split_id, "name": exp.name,
        "model": exp.model, "params": exp.params, "class_names": exp.class_names, "status": exp.status,
        "best_metric": exp.best_metric, "epochs_done": exp.epochs_done, "epochs": exp.params.get("epochs"),
        "metric_name": "accuracy" if exp.params.get("task") == "classification" else "mAP@.5",
        "error": exp.error, "created_at": exp.created_at, "started_at": exp.started_at,
        "finished_at": exp.finished_at,
    }
    if with_history:
        data["history"] = history(session, exp.id)
    return data


def history(session: Session, experiment_id: str) -> list[dict]:
    rows = session.scalars(select(EpochRecord).where(EpochRecord.experiment_id == experiment_id).order_by(EpochRecord.epoch))
    return [r.metrics for r in rows]


def list_experiments(session: Session, project_id: str) -> list[dict]:
    get_project(session, project_id)
    rows = session.scalars(select(Experiment).where(Experiment.project_id == project_id).order_by(Experiment.created_at.desc()))
    return [experiment_public(session, e) for e in rows]


def create_experiment(session: Session, weights_dir: Path, project_id: str, body: ExperimentCreate) -> dict:
    from ray_jobs.core.catalog import MissingWeightsError, get_spec, weights_path
    from ray_jobs.core.module import TrainConfig

    project = get_project(session, project_id)
    try:
        spec = get_spec(body.model)
    except ValueError as exc:
        raise ValidationFailed(f"model: {exc}") from exc
    if spec.task != project.task:
        raise ValidationFailed(
            f"model: {body.model} is a {spec.task} model but this is a {project.task} project; "
            f"choose one from GET /api/training/models?task={project.task}"
        )
    split = get_split(session, project_id, body.split_id)
    totals = split.counts.get("total", {})
    if not totals.get("val"):
        raise ValidationFailed(f"split_id: split {split.id} has no val subset; create a split with val > 0")
    if body.batch_size > totals.get("train", 0):
        raise ValidationFailed(
            f"batch_size: {body.batch_size} is larger than the train subset ({totals.get('train', 0)} images); "
            "lower the batch size"
        )
    class_names = [c for c in split.counts.get("classes", []) if c != BACKGROUND]
    params = body.model_dump(exclude={"name", "split_id", "model"})
    try:
        config = TrainConfig(
            model=body.model, task=project.task, num_classes=len(class_names), class_names=class_names,
            weights_dir=str(weights_dir), **params,
        )
        if body.pretrained:
            weights_path(body.model, weights_dir)
    except MissingWeightsError as exc:
        raise ValidationFailed(f"pretrained: {exc}") from exc
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    exp = Experiment(
        id=new_id("experiment"), project_id=project_id, split_id=split.id, name=body.name, model=body.model,
        params={**params, "task": project.task, "image_size": config.image_size}, class_names=class_names,
        status="created",
    )
    session.add(exp)
    session.commit()
    return experiment_public(session, exp)


def delete_experiment(session: Session, workspace: Workspace, project_id: str, experiment_id: str) -> None:
    exp = get_experiment(session, project_id, experiment_id)
    if exp.status in ACTIVE:
        raise Conflict(f"Experiment {experiment_id} is {exp.status}; stop it before deleting it")
    session.delete(exp)
    session.commit()
    shutil.rmtree(workspace.experiment_dir(project_id, experiment_id), ignore_errors=True)
    shutil.rmtree(workspace.ray_results_dir / experiment_id, ignore_errors=True)


# ---------------------------------------------------------------- the training slot

def acquire_slot(session: Session, experiment_id: str) -> None:
    """Take the one training slot atomically (a row insert), or raise 409. Re-entrant per run."""
    holder = session.get(Lock, TRAINING_LOCK)
    if holder is not None:
        if holder.holder == experiment_id:
            return
        raise Conflict(ALREADY_TRAINING)
    try:
        session.add(Lock(name=TRAINING_LOCK, holder=experiment_id))
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(ALREADY_TRAINING) from None


def release_slot(session: Session, experiment_id: str) -> None:
    session.execute(delete(Lock).where(Lock.name == TRAINING_LOCK, Lock.holder == experiment_id))
    session.commit()


def request_run(session: Session, body: RunRequest, reset_events: Callable[[str], None] | None = None) -> Experiment:
    """Check the request, take the slot and queue the experiment (the launch happens after).
    `reset_events(id)` forgets the previous attempt's events and stop request; it runs before the
    run shows as `queued`, so a stop asked for the queued run is never wiped by it."""
    exp = get_experiment(session, body.project_id, body.experiment_id)
    if exp.status in ACTIVE:
        raise Conflict(ALREADY_TRAINING if exp.status == "running" else f"Experiment {exp.id} is already queued")
    if body.resume:
        if exp.status == "created":
            raise ValidationFailed(f"resume: experiment {exp.id} has never run; start it without resume")
        planned = body.epochs or exp.params["epochs"]
        if planned <= exp.epochs_done:
            raise ValidationFailed(
                f"epochs: the run already did {exp.epochs_done} epochs; to extend it ask for more than that"
            )
    elif body.epochs is not None:
        raise ValidationFailed("epochs: only with resume=true (to extend a run); edit a new experiment instead")
    acquire_slot(session, exp.id)
    try:
        if reset_events is not None:
            reset_events(exp.id)
        if body.epochs is not None:
            exp.params = {**exp.params, "epochs": body.epochs}
        exp.status, exp.error, exp.heartbeat_at = "queued", None, utcnow()
        session.commit()
    except BaseException:
        release_slot(session, exp.id)
        raise
    return exp


# ---------------------------------------------------------------- bookkeeping used by the run driver

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


def mark_running(db_url: str, experiment_id: str, job_id: str | None, resume: bool) -> None:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        acquire_slot(s, experiment_id)
        exp.status, exp.error, exp.job_id = "running", None, job_id
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


def finish_run(db_url: str, experiment_id: str, status: str, error: str | None = None) -> dict:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            return {"status": status, "best_metric": None}
        exp.status, exp.error, exp.finished_at = status, error, utcnow()
        release_slot(s, experiment_id)
        return {"status": status, "best_metric": exp.best_metric, "error": error}


def reap_stale_runs(db_url: str, now=None, ray_started_at=None) -> list[str]:
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
            exp.status, exp.finished_at = "interrupted", now
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


def run_dir(workspace: Workspace, exp: Experiment) -> Path:
    return workspace.experiment_dir(exp.project_id, exp.id)


def log_path(workspace: Workspace, exp: Experiment) -> Path:
    return run_dir(workspace, exp) / "train.log"


def read_log(workspace: Workspace, exp: Experiment, tail_bytes: int = 64_000) -> str:
    path = log_path(workspace, exp)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - tail_bytes))
        return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------- launching, stopping, watching (ingress side)

def launch(db_url: str, project_id: str, experiment_id: str, resume: bool) -> None:
    """Runner job (training lane): drive the run as a Ray task and wait for it. If the task itself
    dies (worker crash, Ray lost) the run did not finish cleanly: mark it interrupted."""
    import ray

    from ray_jobs.train import run_training_task

    try:
        ray.get(run_training_task.remote(project_id, experiment_id, resume))
    except Exception as exc:
        log.warning("Training driver for %s ended abnormally: %s", experiment_id, exc)
        with session_scope(db_url) as s:
            exp = s.get(Experiment, experiment_id)
            still_active = exp is not None and exp.status in ACTIVE
        if still_active:
            finish_run(db_url, experiment_id, "interrupted", f"The training process died: {str(exc)[-500:]}")


def request_stop(session: Session, project_id: str, experiment_id: str) -> Experiment:
    import ray

    from ray_jobs.events import get_event_bus

    exp = get_experiment(session, project_id, experiment_id)
    if exp.status not in ACTIVE:
        raise Conflict(f"Experiment {experiment_id} is {exp.status}, not training")
    ray.get(get_event_bus().request_stop.remote(experiment_id))
    return exp


def watch_runs(db_url: str, stop, every_s: float = 10.0) -> None:
    """Runner job (watch lane): reap runs whose driver vanished, until the app shuts down."""
    while not stop.wait(every_s):
        try:
            for exp_id in reap_stale_runs(db_url):
                log.warning("Experiment %s stopped heart-beating; marked interrupted", exp_id)
        except Exception:
            log.exception("Reaping stale runs failed")


def recover_runs(app) -> None:
    """At start-up: runs left active by a dead process become `interrupted`; then keep watching."""
    from appliance.services.recovery import ray_started_at

    settings = app.state.settings
    for exp_id in reap_stale_runs(settings.db_url, ray_started_at=ray_started_at()):
        log.warning("Experiment %s was cut off by a restart; marked interrupted", exp_id)
    app.state.runner.submit("watch", watch_runs, settings.db_url, app.state.stopping)
