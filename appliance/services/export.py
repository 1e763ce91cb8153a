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

from appliance.store.db import session_scope
from appliance.store.errors import Conflict, NotFound, Unavailable, ValidationFailed
from appliance.store.ids import new_id
from appliance.store.tables import Experiment, Export, utcnow
from appliance.store.paths import Workspace
from appliance.services.ray_runtime import cluster_gpus
from appliance.schemas import StrictBody
from appliance.services.evaluation import trained_checkpoint
from appliance.services.projects import get_owned, get_project

log = logging.getLogger("aistudio.export")
BUNDLE_NAME = "bundle.zip"
METRIC_DROP_FLAG = 0.01  # an exported model more than 1 point worse than PyTorch is flagged


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
    if body.precision == "fp16" and body.format != "tensorrt":
        raise ValidationFailed(
            "precision: fp16 is a TensorRT build option; ONNX and TorchScript exports are fp32 "
            "(choose format tensorrt for fp16)"
        )
    if body.format == "tensorrt":
        from ray_jobs.core.export import tensorrt_available

        ready, reason = tensorrt_available()
        if not ready:
            raise Unavailable(f"TensorRT export needs an NVIDIA GPU host with TensorRT installed: {reason}")
        if cluster_gpus() <= 0:
            raise Unavailable("TensorRT export needs a GPU in the Ray cluster; this cluster has none")


def request_export(session: Session, body: ExportRun) -> Export:
    export = Export(
        id=new_id("export"), project_id=body.project_id, experiment_id=body.experiment_id, format=body.format,
        precision=body.precision, dynamic_batch=body.dynamic_batch, opset=body.opset, status="queued",
        info={"checkpoint": body.checkpoint},
    )
    session.add(export)
    session.commit()
    return export


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
        "download_url": f"/api/export/{export.project_id}/{export.id}/download" if export.status == "completed" else None,
    }


def list_exports(session: Session, project_id: str) -> list[dict]:
    get_project(session, project_id)
    rows = session.scalars(select(Export).where(Export.project_id == project_id).order_by(Export.created_at.desc()))
    return [export_public(session, e) for e in rows]


def bundle_path(workspace: Workspace, export: Export) -> Path:
    return workspace.export_dir(export.project_id, export.id) / BUNDLE_NAME


def download(session: Session, workspace: Workspace, project_id: str, export_id: str) -> tuple[Path, str]:
    export = get_export(session, project_id, export_id)
    if export.status != "completed":
        raise Conflict(f"Export {export_id} is {export.status}; only a completed export can be downloaded")
    path = bundle_path(workspace, export)
    if not path.is_file():
        raise NotFound(f"The bundle of export {export_id} is missing from the workspace")
    exp = session.get(Experiment, export.experiment_id)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in (exp.name if exp else "model"))
    return path, f"{safe}-{export.format}-{export.id}.zip"


def delete_export(session: Session, workspace: Workspace, project_id: str, export_id: str) -> None:
    export = get_export(session, project_id, export_id)
    if export.status == "running":
        raise Conflict(f"Export {export_id} is running; wait for it to finish")
    session.delete(export)
    session.commit()
    shutil.rmtree(workspace.export_dir(project_id, export_id), ignore_errors=True)


# ---------------------------------------------------------------- job side

def update(db_url: str, export_id: str, **fields) -> None:
    info = fields.pop("info", None)
    with session_scope(db_url) as s:
        export = s.get(Export, export_id)
        if export is None:
            return
        for key, value in fields.items():
            setattr(export, key, value)
        if info:
            export.info = {**(export.info or {}), **info}
        if fields.get("status") in ("completed", "failed"):
            export.finished_at = utcnow()


def launch(db_url: str, workspace_root: str, export_id: str, gpu_fraction: float) -> None:
    """Runner job (export lane, one at a time): run the export as a Ray task and wait for it."""
    import ray

    from ray_jobs.export import export_task, task_resources

    with session_scope(db_url) as s:
        export = s.get(Export, export_id)
        if export is None or export.status != "queued":
            return
        fmt = export.format
    try:
        ray.get(export_task.options(**task_resources(fmt, gpu_fraction)).remote(db_url, workspace_root, export_id))
    except Exception as exc:
        update(db_url, export_id, status="failed", error=f"The export task died: {exc}"[-2000:])


def recover_exports(app) -> None:
    """At start-up: an export cut off mid-run failed and its partial files are removed; queued ones
    go back in the queue, in order."""
    settings, workspace = app.state.settings, app.state.workspace
    with session_scope(settings.db_url) as s:
        for export in s.scalars(select(Export).where(Export.status == "running")):
            export.status, export.finished_at = "failed", utcnow()
            export.error = "The server stopped during this export; run it again"
            shutil.rmtree(workspace.export_dir(export.project_id, export.id), ignore_errors=True)
        queued = list(s.scalars(select(Export.id).where(Export.status == "queued").order_by(Export.created_at)))
    for export_id in queued:
        app.state.runner.submit("export", launch, settings.db_url, str(settings.workspace), export_id,
                                settings.eval_gpu_fraction)
