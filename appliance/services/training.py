"""Experiments and training runs, the web side: validation, starting (the claim), launching,
stopping, listing, and watching for runs whose process died.

A run is driven by `ray_jobs.train.run_training` — from the UI (a zero-CPU Ray task launched
by the runner's training lane) or from `ray job submit`. Both record the run's life through
`appliance.store.runs`, so they look the same in the UI.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.store import runs
from appliance.store.errors import Conflict, ValidationFailed
from appliance.store.ids import new_id
from appliance.store.paths import Workspace
from appliance.store.status import ACTIVE, JobStatus
from appliance.store.tables import EpochRecord, Experiment, Export
from appliance.schemas import StoredText, StrictBody
from appliance.services import baselines, deletion, ray_tasks
from appliance.services.projects import get_owned, get_project
from appliance.services.class_list import split_class_names
from appliance.services.splits import get_split
from ray_jobs.hyperparameters import Hyperparameters

log = logging.getLogger("aistudio.training")


class ExperimentCreate(StrictBody, Hyperparameters):
    """An experiment: a name, a split, a model and the hyperparameters (`Hyperparameters`)."""

    name: StoredText = Field(min_length=1, max_length=200)
    split_id: str
    model: str = Field(min_length=1, max_length=100)


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
        "finished_at": exp.finished_at, "run_seconds": exp.run_seconds or 0.0,
        "duration_s": runs.duration_seconds(exp), **baselines.for_experiment(session, exp),
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
    class_names = split_class_names(session, split.id, project.task)
    params = body.model_dump(include=set(Hyperparameters.model_fields))
    try:
        config = TrainConfig.from_run(body.model, class_names, {**params, "task": project.task},
                                      weights_dir=str(weights_dir))
        if body.pretrained:
            weights_path(body.model, weights_dir)
    except MissingWeightsError as exc:  # the catalog's message names a server folder: not for the page
        raise ValidationFailed(
            f"pretrained: the pretrained weights of {body.model} ({exc.file.name}) are not downloaded yet: "
            "press \"Download weights\" beside Pretrained on the Training page (or POST /api/weights, or run "
            "`aistudio fetch-weights` on the server), or untick Pretrained to train from scratch"
        ) from exc
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    exp = Experiment(
        id=new_id("experiment"), project_id=project_id, split_id=split.id, name=body.name, model=body.model,
        params={**params, "task": project.task, "image_size": config.image_size}, class_names=class_names,
        status=JobStatus.CREATED,
    )
    session.add(exp)
    session.commit()
    return experiment_public(session, exp)


def delete_experiment(session: Session, workspace: Workspace, project_id: str, experiment_id: str,
                      force: bool = False) -> None:
    """The run, its evaluations and exports (cascade) and their files, once none of them is running."""
    exp = get_experiment(session, project_id, experiment_id)
    deletion.clear_the_way(session, f"Experiment {experiment_id}", deletion.experiment_jobs(session, exp.id), force)
    export_ids = session.scalars(select(Export.id).where(Export.experiment_id == exp.id)).all()
    session.delete(exp)
    session.commit()
    shutil.rmtree(workspace.experiment_dir(project_id, experiment_id), ignore_errors=True)
    shutil.rmtree(workspace.ray_results_dir / experiment_id, ignore_errors=True)
    for export_id in export_ids:
        shutil.rmtree(workspace.export_dir(project_id, export_id), ignore_errors=True)


# ---------------------------------------------------------------- starting a run

def request_run(session: Session, body: RunRequest, reset_events: Callable[[str], None] | None = None) -> Experiment:
    """Check the request, then claim the run (the slot, and `queued`); the launch happens after.
    `reset_events(id)` forgets the previous attempt's events and stop request; it runs before the
    run shows as `queued`, so a stop asked for the queued run is never wiped by it."""
    exp = get_experiment(session, body.project_id, body.experiment_id)
    if exp.status in ACTIVE:
        raise Conflict(runs.already_active(exp.id, exp.status))
    if body.resume:
        if exp.status == JobStatus.CREATED:
            raise ValidationFailed(f"resume: experiment {exp.id} has never run; start it without resume")
        planned = body.epochs or exp.params["epochs"]
        if planned <= exp.epochs_done:
            raise ValidationFailed(
                f"epochs: the run already did {exp.epochs_done} epochs; to extend it ask for more than that"
            )
    elif body.epochs is not None:
        raise ValidationFailed("epochs: only with resume=true (to extend a run); edit a new experiment instead")
    params = {**exp.params, "epochs": body.epochs} if body.epochs is not None else None
    runs.claim(session, exp, params, before_queued=reset_events)  # sets exp.claim_id, for `launch`
    return exp


def read_log(workspace: Workspace, exp: Experiment, tail_bytes: int = 64_000) -> str:
    path = runs.log_path(workspace, exp)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - tail_bytes))
        return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------- launching, stopping, watching (ingress side)

def launch(db_url: str, experiment_id: str, resume: bool, claim_id: str | None = None) -> None:
    """Runner job (training lane): drive the claimed run as a Ray task and wait for it. If the task
    itself dies (worker crash, Ray lost) the run did not finish cleanly: mark it interrupted —
    unless it was claimed again since (then it is another start's run)."""
    import ray

    from ray_jobs.train import run_training_task

    try:
        ref = run_training_task.remote(experiment_id, resume, claim_id)
        with ray_tasks.tracked(experiment_id, ref):
            ray.get(ref)
    except Exception as exc:
        log.warning("Training driver for %s ended abnormally: %s", experiment_id, exc)
        if runs.is_active(db_url, experiment_id):
            runs.finish(db_url, experiment_id, JobStatus.INTERRUPTED, f"The training process died: {str(exc)[-500:]}",
                        claim_id=claim_id)


def request_stop(session: Session, project_id: str, experiment_id: str) -> Experiment:
    import ray

    from ray_jobs.events import get_event_bus

    exp = get_experiment(session, project_id, experiment_id)
    if exp.status not in ACTIVE:
        raise Conflict(f"Experiment {experiment_id} is {exp.status}, not training")
    ray.get(get_event_bus().request_stop.remote(experiment_id))
    return exp


def watch_runs(db_url: str, stop, every_s: float = 10.0) -> None:
    """Runner job (watch lane): reap runs whose driver vanished (Ray says it ended, or it stopped
    heart-beating), until the app shuts down."""
    from appliance.services.recovery import ray_driver_alive

    while not stop.wait(every_s):
        try:
            for exp_id in runs.reap_stale_runs(db_url, driver_alive=ray_driver_alive):
                log.warning("Experiment %s stopped heart-beating; marked interrupted", exp_id)
        except Exception:
            log.exception("Reaping stale runs failed")


def recover_runs(app) -> None:
    """At start-up: runs left active by a dead process become `interrupted`; then keep watching."""
    from appliance.services.recovery import ray_driver_alive, ray_started_at

    settings = app.state.settings
    reaped = runs.reap_stale_runs(settings.db_url, ray_started_at=ray_started_at(), driver_alive=ray_driver_alive)
    for exp_id in reaped:
        log.warning("Experiment %s was cut off by a restart; marked interrupted", exp_id)
    app.state.runner.submit("watch", watch_runs, settings.db_url, app.state.stopping)
