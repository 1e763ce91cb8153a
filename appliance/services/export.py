"""Exports: requests (checked before any job starts), records, the queue, download bundles.

Exports run one at a time: the runner's export lane has one worker, fed in creation order, and
a queued export survives a restart (its record is re-submitted at start-up). The work itself is
a Ray task (`ray_jobs.export`), on a GPU for TensorRT.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.store import exports
from appliance.store.db import session_scope
from appliance.store.exports import bundle_path
from appliance.store.status import JobStatus
from appliance.store.errors import Conflict, NotFound
from appliance.store.tables import Experiment, Export
from appliance.store.paths import Workspace
from appliance.services import deletion, ray_tasks
from appliance.services.ray_runtime import cluster_gpus
from appliance.schemas import StrictBody
from appliance.services.evaluation import trained_checkpoint
from appliance.services.projects import get_owned, get_project

log = logging.getLogger("aistudio.export")


class ExportRun(StrictBody):
    project_id: str
    experiment_id: str
    format: Literal["onnx", "torchscript", "tensorrt"] = "onnx"
    precision: Literal["fp32", "fp16"] = "fp32"
    dynamic_batch: bool = True
    opset: int | None = Field(default=None, ge=13, le=23)
    checkpoint: Literal["best", "last"] = "best"


def check_request(session: Session, workspace: Workspace, body: ExportRun) -> None:
    """Everything that can be refused before a job exists: untrained experiment, bad combination,
    TensorRT on a host that can't build engines."""
    trained_checkpoint(session, workspace, body.project_id, body.experiment_id, body.checkpoint)
    from ray_jobs.export import check_format  # here, not at the top: it loads Ray, which the web app loads lazily

    check_format(body.format, body.precision, cluster_gpus())


def request_export(session: Session, body: ExportRun) -> Export:
    return exports.queue(session, body.project_id, body.experiment_id, body.format, body.precision,
                         body.dynamic_batch, body.opset, body.checkpoint)


def get_export(session: Session, project_id: str, export_id: str) -> Export:
    return get_owned(session, Export, "export", project_id, export_id)


def export_public(session: Session, export: Export) -> dict:
    exp = session.get(Experiment, export.experiment_id)
    info = export.info or {}
    return {
        "id": export.id, "project_id": export.project_id, "experiment_id": export.experiment_id,
        "experiment_name": exp.name if exp else None, "model": exp.model if exp else None,
        "format": export.format, "precision": export.precision, "dynamic_batch": export.dynamic_batch,
        "opset": export.opset, "status": export.status, "size_bytes": export.size_bytes,
        "parity": info.get("parity"), "latency": info.get("latency"), "metric": info.get("metric"),
        "stage": info.get("stage"), "info": info, "error": export.error,
        "created_at": export.created_at, "finished_at": export.finished_at,
        "download_url": (f"/api/export/{export.project_id}/{export.id}/download"
                         if export.status == JobStatus.COMPLETED else None),
    }


def list_exports(session: Session, project_id: str) -> list[dict]:
    get_project(session, project_id)
    rows = session.scalars(select(Export).where(Export.project_id == project_id).order_by(Export.created_at.desc()))
    return [export_public(session, e) for e in rows]


def download(session: Session, workspace: Workspace, project_id: str, export_id: str) -> tuple[Path, str]:
    export = get_export(session, project_id, export_id)
    if export.status != JobStatus.COMPLETED:
        raise Conflict(f"Export {export_id} is {export.status}; only a completed export can be downloaded")
    path = bundle_path(workspace, export)
    if not path.is_file():
        raise NotFound(f"The bundle of export {export_id} is missing from the workspace")
    exp = session.get(Experiment, export.experiment_id)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in (exp.name if exp else "model"))
    return path, f"{safe}-{export.format}-{export.id}.zip"


def delete_export(session: Session, workspace: Workspace, project_id: str, export_id: str,
                  force: bool = False) -> None:
    export = get_export(session, project_id, export_id)
    from appliance.services.deployments import refuse_if_served

    refuse_if_served(session, f"Export {export_id}", export_id=export_id)
    jobs = [deletion.Job("export", export.id, export.status)] if export.status in deletion.BLOCKING else []
    deletion.clear_the_way(session, f"Export {export_id}", jobs, force)
    session.delete(export)
    session.commit()
    shutil.rmtree(workspace.export_dir(project_id, export_id), ignore_errors=True)


def launch(db_url: str, workspace_root: str, export_id: str, gpu_fraction: float) -> None:
    """Runner job (export lane, one at a time): run the export as a Ray task and wait for it."""
    import ray

    from ray_jobs.export import export_task, task_resources

    fmt = exports.queued_format(db_url, export_id)
    if fmt is None:
        return
    try:
        ref = export_task.options(**task_resources(fmt, gpu_fraction)).remote(db_url, workspace_root, export_id)
        with ray_tasks.tracked(export_id, ref):
            ray.get(ref)
    except Exception as exc:
        exports.update(db_url, export_id, status=JobStatus.FAILED, error=f"The export task died: {exc}"[-2000:])


def recover_exports(app) -> None:
    """At start-up: an export cut off mid-run failed and its partial files are removed; queued ones
    go back in the queue, in order."""
    settings, workspace = app.state.settings, app.state.workspace
    with session_scope(settings.db_url) as s:
        queued = exports.recover(s, workspace)
    for export_id in queued:
        app.state.runner.submit("export", launch, settings.db_url, str(settings.workspace), export_id,
                                settings.eval_gpu_fraction)
