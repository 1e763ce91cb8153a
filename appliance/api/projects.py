"""`/api/projects` — project CRUD."""

from __future__ import annotations

from fastapi import APIRouter, Request

from appliance.http.deps import ForceQ, LimitQ, OffsetQ, ProjectId, SessionDep, WorkspaceDep
from appliance.http.envelope import Envelope, Page, ok
from appliance.schemas import Deleted, ProjectCreate, ProjectPublic, ProjectUpdate
from appliance.services import projects as service
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/projects", tags=["projects"])


@router.get("", response_model=Envelope[Page[ProjectPublic]])
def list_projects(request: Request, session: SessionDep, offset: OffsetQ = 0, limit: LimitQ = 100):
    """List projects with image and experiment counts."""
    items, total = service.list_projects(session, offset, limit)
    if wants_fragment(request):
        return render(request, "fragments/project_list.html", projects=items)
    return ok(Page(items=items, total=total, offset=offset, limit=limit))


@router.post("", status_code=201, response_model=Envelope[ProjectPublic])
def create_project(request: Request, body: ProjectCreate, session: SessionDep, workspace: WorkspaceDep):
    """Create a project."""
    project = service.create_project(session, workspace, body)
    if wants_fragment(request):
        items, _ = service.list_projects(session, 0, 500)
        response = render(request, "fragments/project_list.html", status_code=201, projects=items)
        response.headers["HX-Redirect"] = f"/projects/{project.id}/dataset"  # the page opens the new project
        return response
    return ok(project)


@router.get("/{project_id}", response_model=Envelope[ProjectPublic])
def get_project(project_id: ProjectId, session: SessionDep):
    """One project."""
    return ok(service.to_public(session, service.get_project(session, project_id)))


@router.patch("/{project_id}", response_model=Envelope[ProjectPublic])
def update_project(request: Request, project_id: ProjectId, body: ProjectUpdate, session: SessionDep):
    """Rename or describe a project."""
    project = service.update_project(session, project_id, body)
    if wants_fragment(request):
        items, _ = service.list_projects(session, 0, 500)
        return render(request, "fragments/project_list.html", projects=items)
    return ok(project)


@router.delete("/{project_id}", response_model=Envelope[Deleted])
def delete_project(request: Request, project_id: ProjectId, session: SessionDep, workspace: WorkspaceDep,
                   force: ForceQ = False):
    """Delete a project with all its files; 409 naming the jobs that use it (`?force=true` stops them first)."""
    service.delete_project(session, workspace, project_id, force)
    if wants_fragment(request):
        items, _ = service.list_projects(session, 0, 500)
        return render(request, "fragments/project_list.html", projects=items)
    return ok({"id": project_id, "deleted": True})
