"""`/api/export` — export to ONNX / TorchScript / TensorRT (one at a time), verify, download a bundle."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from appliance.http.deps import ForceQ, ProjectId, RunnerDep, SessionDep, SettingsDep, WorkspaceDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import Deleted, ExportPublic
from appliance.store.errors import Unavailable
from appliance.services.ray_runtime import ray_is_up
from appliance.services import export as service
from appliance.services.export import ExportRun
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/export", tags=["export"])


@router.get("/{project_id}", response_model=Envelope[list[ExportPublic]])
def list_exports(request: Request, project_id: ProjectId, session: SessionDep):
    """Exports with status, size, parity, metric delta and latency."""
    items = service.list_exports(session, project_id)
    if wants_fragment(request):
        return render(request, "fragments/export_list.html", exports=items, project_id=project_id)
    return ok(items)


@router.post("/run", status_code=202, response_model=Envelope[ExportPublic])
def run(body: ExportRun, session: SessionDep, settings: SettingsDep, workspace: WorkspaceDep, runner: RunnerDep):
    """Queue an export → 202; exports run one at a time in request order. TensorRT without a GPU → 503."""
    service.check_request(session, workspace, body)
    if not ray_is_up():
        raise Unavailable("Ray is not reachable; exports run on the Ray cluster")
    export = service.request_export(session, body)
    runner.submit("export", service.launch, settings.db_url, str(settings.workspace), export.id, settings.eval_gpu_fraction)
    return ok(service.export_public(session, export))


@router.get("/{project_id}/{export_id}", response_model=Envelope[ExportPublic])
def get_export(project_id: ProjectId, export_id: str, session: SessionDep):
    """Status, size, parity against PyTorch, metric delta, latency."""
    return ok(service.export_public(session, service.get_export(session, project_id, export_id)))


@router.get("/{project_id}/{export_id}/download", response_class=FileResponse)
def download(project_id: ProjectId, export_id: str, session: SessionDep, workspace: WorkspaceDep):
    """The bundle ZIP: model file, labels.json, preprocess.json, predict.py, README.md."""
    path, filename = service.download(session, workspace, project_id, export_id)
    return FileResponse(path, media_type="application/zip", filename=filename)


@router.delete("/{project_id}/{export_id}", response_model=Envelope[Deleted])
def delete_export(project_id: ProjectId, export_id: str, session: SessionDep, workspace: WorkspaceDep,
                  force: ForceQ = False):
    """Remove an export and its files; 409 while it is queued or runs (`?force=true` cancels it first)."""
    service.delete_export(session, workspace, project_id, export_id, force)
    return ok({"id": export_id, "deleted": True})
