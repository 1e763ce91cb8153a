"""`/api/system` — health, GPUs, workspace usage, running jobs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from appliance.http.deps import SessionDep, WorkspaceDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import GpusPublic, HealthDown, HealthPublic, JobPublic, WorkspaceUsagePublic
from appliance.services import system as service
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/system", tags=["system"])


@router.get("/health", response_model=Envelope[HealthPublic], responses={503: {"model": HealthDown}})
def health(request: Request, session: SessionDep, workspace: WorkspaceDep):
    """Ray, database and workspace state; 503 when a part is down."""
    parts = service.health(session, workspace)
    if wants_fragment(request):
        return render(request, "fragments/status_strip.html", health=parts, gpu=service.gpus())
    down = [name for name in ("ray", "database", "workspace_writable") if not parts[name]]
    if not down:
        return ok(parts)
    # An error envelope (so monitors see UNAVAILABLE) that still carries every part's state.
    body = {"status": "error", "error": {"code": "UNAVAILABLE", "message": f"Down: {', '.join(down)}"}, "data": parts}
    return JSONResponse(body, status_code=503)


@router.get("/gpu", response_model=Envelope[GpusPublic])
def gpu():
    """Per-GPU name, memory, utilisation, temperature (NVML); empty with a reason without a GPU."""
    return ok(service.gpus())


@router.get("/workspace", response_model=Envelope[WorkspaceUsagePublic])
def workspace_usage(session: SessionDep, workspace: WorkspaceDep):
    """Bytes per project and free space on the workspace volume."""
    return ok(service.workspace_usage(session, workspace))


@router.get("/jobs", response_model=Envelope[list[JobPublic]])
def jobs(session: SessionDep):
    """Queued and running jobs of every kind."""
    return ok(service.active_jobs(session))
