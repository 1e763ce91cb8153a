"""What a delete must not pull out from under a job, and how `?force=true` clears the way.

A delete refuses (409, naming each job) while a job uses what it would remove: a training run,
evaluation or export of the experiment, an import into the project, any job reading the image.
With `force` it stops those jobs first — training and running evaluations and exports have their
Ray task cancelled at once (the epoch in progress is lost), queued ones never start, imports are
cancelled (their staging is discarded) — and deletes only once every one of them has ended, so
no job keeps writing files for a record that is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.services import ray_tasks
from appliance.store import evaluations, exports, imports
from appliance.store.errors import Conflict
from appliance.store.status import ACTIVE, JobStatus
from appliance.store.tables import Evaluation, Experiment, Export, ImportJob, SplitAssignment

# An import being cancelled still writes until it notices: it blocks a delete like a running one.
BLOCKING = (*ACTIVE, JobStatus.CANCELLING)
FORCE_WAIT_S = 60.0

_MODELS = {"import": ImportJob, "training run": Experiment, "evaluation": Evaluation, "export": Export}


@dataclass(frozen=True)
class Job:
    kind: str  # a key of _MODELS
    id: str
    status: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"


def _busy(session: Session, kind: str, *where) -> list[Job]:
    model = _MODELS[kind]
    rows = session.execute(select(model.id, model.status).where(model.status.in_(BLOCKING), *where))
    return [Job(kind, job_id, status) for job_id, status in rows]


def project_jobs(session: Session, project_id: str) -> list[Job]:
    return [job for kind, model in _MODELS.items() for job in _busy(session, kind, model.project_id == project_id)]


def experiment_jobs(session: Session, experiment_id: str) -> list[Job]:
    return (_busy(session, "training run", Experiment.id == experiment_id)
            + _busy(session, "evaluation", Evaluation.experiment_id == experiment_id)
            + _busy(session, "export", Export.experiment_id == experiment_id))


def image_jobs(session: Session, image_id: str) -> list[Job]:
    """Jobs that read the image: runs on a split holding it, and their evaluations and exports."""
    users = select(Experiment.id).join(SplitAssignment, SplitAssignment.split_id == Experiment.split_id).where(
        SplitAssignment.image_id == image_id)
    return (_busy(session, "training run", Experiment.id.in_(users))
            + _busy(session, "evaluation", Evaluation.experiment_id.in_(users))
            + _busy(session, "export", Export.experiment_id.in_(users)))


def clear_the_way(session: Session, what: str, jobs: list[Job], force: bool, wait_s: float = FORCE_WAIT_S) -> None:
    """Return when no job is in the way of deleting `what`; else raise 409 naming the jobs."""
    if not jobs:
        return
    names = ", ".join(map(str, jobs))
    if not force:
        raise Conflict(f"{what} is in use by {names}; wait for it to end or stop it, "
                       "or delete with ?force=true to stop it first")
    deadline = time.monotonic() + wait_s
    while True:
        for job in jobs:
            _stop(session, job)
        session.expire_all()
        jobs = [job for job in jobs if _still_busy(session, job)]
        if not jobs:
            return
        if time.monotonic() > deadline:
            raise Conflict(f"{what}: {', '.join(map(str, jobs))} did not stop within {wait_s:.0f} s; try again")
        time.sleep(0.5)


def _still_busy(session: Session, job: Job) -> bool:
    row = session.get(_MODELS[job.kind], job.id)
    return row is not None and row.status in BLOCKING


def _stop(session: Session, job: Job) -> None:
    """Ask once more (idempotent): a queued job may have started since the last try."""
    if job.kind == "import":
        row = session.get(ImportJob, job.id)
        if row is not None and row.status in ACTIVE:
            imports.cancel(session, row)
    elif job.kind == "training run":
        if not ray_tasks.cancel(job.id):  # not launched by this ingress (e.g. `ray job submit`): ask the driver
            from ray_jobs.events import get_event_bus

            get_event_bus().request_stop.remote(job.id)
    elif job.kind == "evaluation":
        evaluations.cancel_queued(session, job.id) or ray_tasks.cancel(job.id)
    else:
        exports.cancel_queued(session, job.id) or ray_tasks.cancel(job.id)
