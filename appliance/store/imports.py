"""The import record's state changes: queue, start, progress, cancel, finish, start-up recovery.

Every change that can race with another (a cancel against the job starting) is one conditional
UPDATE, never a read-then-write.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.errors import Conflict
from appliance.store.ids import new_id
from appliance.store.status import ACTIVE, JobStatus
from appliance.store.tables import Image, ImportJob, Project, utcnow

MAX_WARNINGS_KEPT = 1000
CANCELLED_MESSAGE = "Cancelled by the user; the dataset is unchanged"
INTERRUPTED_MESSAGE = "The server stopped during this import; the dataset is unchanged. Import again."
# An import in any of these holds a place in the queue or a worker: listed as a job, counted by the cap.
IN_PROGRESS = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)


def queue(session: Session, project_id: str, fmt: str, source: str, import_id: str | None = None,
          yaml_file: str | None = None) -> ImportJob:
    job = ImportJob(id=import_id or new_id("import"), project_id=project_id, status=JobStatus.QUEUED, format=fmt,
                    source=source, yaml_file=yaml_file)
    session.add(job)
    session.commit()
    return job


def cancel(session: Session, job: ImportJob) -> ImportJob:
    """A queued import is cancelled at once; a running one is asked to stop (`cancelling`) and
    becomes `cancelled` when the job notices. Conditional updates: the job may start meanwhile."""
    if job.status not in ACTIVE:
        raise Conflict(f"Import {job.id} is {job.status}; only a queued or running import can be cancelled")
    queued = session.execute(
        update(ImportJob).where(ImportJob.id == job.id, ImportJob.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, error=CANCELLED_MESSAGE, finished_at=utcnow())
    ).rowcount
    if not queued:
        session.execute(
            update(ImportJob).where(ImportJob.id == job.id, ImportJob.status == JobStatus.RUNNING)
            .values(status=JobStatus.CANCELLING)
        )
    session.commit()
    session.refresh(job)
    return job


def start(db_url: str, import_id: str) -> tuple[str, str, str, str] | None:
    """queued → running, only if nobody cancelled it meanwhile; `(project_id, task, format, source)`,
    or None when the job is not to run."""
    with session_scope(db_url) as s:
        started = s.execute(
            update(ImportJob).where(ImportJob.id == import_id, ImportJob.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, started_at=utcnow())
        ).rowcount
        if not started:
            return None
        job = s.get(ImportJob, import_id)
        project = s.get(Project, job.project_id)
        return project.id, project.task, job.format, job.source


def yaml_file(db_url: str, import_id: str) -> str | None:
    """The import's `yaml_file` option (YOLO: which root YAML holds the class names)."""
    with session_scope(db_url) as s:
        return s.get(ImportJob, import_id).yaml_file


def set_progress(db_url: str, import_id: str, done: int, total: int) -> bool:
    """Record progress; True when a cancel was asked for."""
    with session_scope(db_url) as s:
        job = s.get(ImportJob, import_id)
        job.done, job.total = done, total
        return job.status == JobStatus.CANCELLING


def cancel_requested(db_url: str, import_id: str) -> bool:
    with session_scope(db_url) as s:
        return s.get(ImportJob, import_id).status == JobStatus.CANCELLING


def complete(db_url: str, import_id: str, detected: str, added: int, duplicates: int, warnings: list[dict],
             items: int) -> None:
    with session_scope(db_url) as s:
        job = s.get(ImportJob, import_id)
        job.status, job.detected = JobStatus.COMPLETED, detected
        job.added, job.duplicates = added, duplicates
        job.skipped = len({w["file"] for w in warnings})
        job.warnings = warnings[:MAX_WARNINGS_KEPT]
        job.done = job.total = max(job.total, items)
        job.finished_at = utcnow()


def finish(db_url: str, import_id: str, status: JobStatus, error: str) -> None:
    with session_scope(db_url) as s:
        job = s.get(ImportJob, import_id)
        if job is not None:
            job.status, job.error, job.finished_at = status, error, utcnow()


def recover(session: Session) -> tuple[set[str], list[str]]:
    """At start-up: an import cut off mid-run failed and left the dataset unchanged — unless its
    rows were committed (the process died just before closing the job), then it completed.
    Returns the projects whose dataset folder needs sweeping and the queued imports, in order."""
    swept: set[str] = set()
    cut_off = (JobStatus.RUNNING, JobStatus.CANCELLING)
    for job in session.scalars(select(ImportJob).where(ImportJob.status.in_(cut_off))):
        _close(session, job, JobStatus.FAILED, INTERRUPTED_MESSAGE)
        swept.add(job.project_id)
    queued = session.scalars(
        select(ImportJob.id).where(ImportJob.status == JobStatus.QUEUED).order_by(ImportJob.created_at)
    )
    return swept, list(queued)


def close_cut_off(session: Session, import_id: str, status: JobStatus, message: str) -> str | None:
    """The import's worker process is gone without closing the job: it completed if its rows were
    committed, else it ends `status` with `message`. Returns its project (whose dataset folder may
    hold files moved in without rows) when the job was still open, else None."""
    job = session.get(ImportJob, import_id)
    if job is None or job.status not in IN_PROGRESS:
        return None
    _close(session, job, status, message)
    return job.project_id


def _close(session: Session, job: ImportJob, status: JobStatus, message: str) -> None:
    committed = session.scalar(select(func.count()).select_from(Image).where(Image.import_id == job.id)) or 0
    job.finished_at = utcnow()
    if committed:
        job.status, job.added, job.error = JobStatus.COMPLETED, committed, None
        job.done = job.total = max(job.total, committed)
    else:
        job.status, job.error = status, message
