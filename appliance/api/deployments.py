"""`/api/deployments` — serve a completed export as a live prediction endpoint (`/models/<name>/predict`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from appliance.http.deps import SessionDep, WorkspaceDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import Deleted, DeploymentCreated, DeploymentPublic
from appliance.services import deployments as service
from appliance.services.deployments import DeploymentCreate

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


@router.post("", status_code=202, response_model=Envelope[DeploymentCreated])
def create(request: Request, body: DeploymentCreate, session: SessionDep, workspace: WorkspaceDep):
    """Start an endpoint → 202 `deploying`; the API key is in this answer only. Name taken → 409."""
    service.check_request(session, workspace, body)
    row, api_key = service.create(session, body)
    service.submit(request.app.state, row.id)
    return ok({**service.to_public(session, row, live=False), "api_key": api_key})


@router.get("", response_model=Envelope[list[DeploymentPublic]])
def list_deployments(session: SessionDep,
                     project_id: Annotated[str | None, Query(description="Only this project's endpoints")] = None):
    """Endpoints with status, replicas and live figures."""
    return ok(service.list_deployments(session, project_id))


@router.get("/{deployment_id}", response_model=Envelope[DeploymentPublic])
def get_deployment(deployment_id: str, session: SessionDep):
    """Status, replicas (running/target) and figures (requests, errors, p50/p99, requests/s)."""
    return ok(service.to_public(session, service.get(session, deployment_id)))


@router.delete("/{deployment_id}", response_model=Envelope[Deleted])
def undeploy(deployment_id: str, session: SessionDep):
    """Undeploy: the endpoint's application is removed (its URL answers 404) and so is the record."""
    service.undeploy(session, deployment_id)
    return ok({"id": deployment_id, "deleted": True})
