"""The export record's state changes, and what the export job reads of it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.ids import new_id
from appliance.store.paths import Workspace
from appliance.store.runs import checkpoint_path, load_run_inputs, subset_samples
from appliance.store.records import move_status
from appliance.store.status import JobStatus
from appliance.store.tables import Experiment, Export, utcnow

BUNDLE_NAME = "bundle.zip"
INTERRUPTED_MESSAGE = "The server stopped during this export; run it again"
CANCELLED_MESSAGE = "Cancelled: what it exported was deleted"


def queue(session: Session, project_id: str, experiment_id: str, fmt: str, precision: str, dynamic_batch: bool,
          opset: int | None, checkpoint: str) -> Export:
    export = Export(
        id=new_id("export"), project_id=project_id, experiment_id=experiment_id, format=fmt,
        precision=precision, dynamic_batch=dynamic_batch, opset=opset, status=JobStatus.QUEUED,
        info={"checkpoint": checkpoint},
    )
    session.add(export)
    session.commit()
    return export


def bundle_path(workspace: Workspace, export: Export) -> Path:
    return workspace.export_dir(export.project_id, export.id) / BUNDLE_NAME


def queued_format(db_url: str, export_id: str) -> str | None:
    """The format of a queued export; None when it is not queued (any more)."""
    with session_scope(db_url) as s:
        export = s.get(Export, export_id)
        return export.format if export is not None and export.status == JobStatus.QUEUED else None


def start(db_url: str, export_id: str) -> bool:
    """queued → running, only if nobody cancelled it meanwhile."""
    with session_scope(db_url) as s:
        return move_status(s, Export, export_id, JobStatus.QUEUED, status=JobStatus.RUNNING)


def cancel_queued(session: Session, export_id: str) -> bool:
    """queued → failed (cancelled) before it starts; False when it is no longer queued."""
    return move_status(session, Export, export_id, JobStatus.QUEUED,
                       status=JobStatus.FAILED, error=CANCELLED_MESSAGE, finished_at=utcnow())


@dataclass(frozen=True)
class ExportPlan:
    """What the export job needs, as plain values."""

    format: str
    precision: str
    dynamic_batch: bool
    opset: int | None
    checkpoint: Path
    out_dir: Path
    train: list[dict]
    val: list[dict]
    test: list[dict]


def plan(db_url: str, workspace: Workspace, export_id: str) -> ExportPlan:
    with session_scope(db_url) as s:
        export = s.get(Export, export_id)
        exp = s.get(Experiment, export.experiment_id)
        train, val = load_run_inputs(s, workspace, exp)
        return ExportPlan(
            export.format, export.precision, export.dynamic_batch, export.opset,
            checkpoint_path(workspace, exp, (export.info or {}).get("checkpoint", "best")),
            workspace.export_dir(exp.project_id, export_id), train, val, subset_samples(s, workspace, exp, "test"),
        )


def update(db_url: str, export_id: str, **fields) -> None:
    """Set fields of the record; `info` is merged into the stored info; a terminal status stamps the end."""
    info = fields.pop("info", None)
    with session_scope(db_url) as s:
        export = s.get(Export, export_id)
        if export is None:
            return
        for key, value in fields.items():
            setattr(export, key, value)
        if info:
            export.info = {**(export.info or {}), **info}
        if fields.get("status") in (JobStatus.COMPLETED, JobStatus.FAILED):
            export.finished_at = utcnow()


def recover(session: Session, workspace: Workspace) -> list[str]:
    """At start-up: an export cut off mid-run failed and its partial files are removed. Returns the
    queued ones, in order."""
    for export in session.scalars(select(Export).where(Export.status == JobStatus.RUNNING)):
        export.status, export.finished_at = JobStatus.FAILED, utcnow()
        export.error = INTERRUPTED_MESSAGE
        shutil.rmtree(workspace.export_dir(export.project_id, export.id), ignore_errors=True)
    queued = session.scalars(select(Export.id).where(Export.status == JobStatus.QUEUED).order_by(Export.created_at))
    return list(queued)
