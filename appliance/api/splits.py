"""`/api/splits` — split CRUD."""

from __future__ import annotations

from fastapi import APIRouter, Request

from appliance.http.deps import ProjectId, SessionDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import Deleted, SplitPublic
from appliance.services import splits as service
from appliance.services.projects import get_project
from appliance.services.splits import SplitCreate
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/splits", tags=["splits"])


@router.get("/{project_id}", response_model=Envelope[list[SplitPublic]])
def list_splits(request: Request, project_id: ProjectId, session: SessionDep):
    """The project's splits with per-subset counts."""
    items = service.list_splits(session, project_id)
    if wants_fragment(request):
        return render(request, "fragments/split_list.html", splits=items, project_id=project_id)
    return ok(items)


@router.post("/{project_id}", status_code=201, response_model=Envelope[SplitPublic])
def create_split(request: Request, project_id: ProjectId, body: SplitCreate, session: SessionDep):
    """Create a split: ratios summing to 1, a seed (deterministic), optionally stratified by class."""
    split = service.create_split(session, project_id, body)
    if wants_fragment(request):
        return render(request, "fragments/split_list.html", status_code=201,
                      splits=service.list_splits(session, project_id), project_id=project_id)
    return ok(split)


@router.get("/{project_id}/{split_id}", response_model=Envelope[SplitPublic])
def get_split(project_id: ProjectId, split_id: str, session: SessionDep):
    """Per-subset counts, per class."""
    get_project(session, project_id)
    return ok(service.split_public(service.get_split(session, project_id, split_id)))


@router.delete("/{project_id}/{split_id}", response_model=Envelope[Deleted])
def delete_split(request: Request, project_id: ProjectId, split_id: str, session: SessionDep):
    """Delete a split; 409 while an experiment uses it."""
    get_project(session, project_id)
    service.delete_split(session, project_id, split_id)
    if wants_fragment(request):
        return render(request, "fragments/split_list.html", splits=service.list_splits(session, project_id),
                      project_id=project_id)
    return ok({"id": split_id, "deleted": True})
