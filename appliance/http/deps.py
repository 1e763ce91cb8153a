"""`Annotated` dependencies so route signatures stay one line each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from appliance.config import Settings
from appliance.store.ids import check_id
from appliance.services.runner import JobRunner
from appliance.store.paths import Workspace


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def _runner(request: Request) -> JobRunner:
    return request.app.state.runner


def _session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(_settings)]
WorkspaceDep = Annotated[Workspace, Depends(_workspace)]
RunnerDep = Annotated[JobRunner, Depends(_runner)]
SessionDep = Annotated[Session, Depends(_session)]

# Path ids are checked against their pattern before any lookup: a bad id is a 404, never a path.
ProjectId = Annotated[str, Path(description="proj-…"), Depends(lambda project_id: check_id("project", project_id))]
# At most SQLite's largest integer: a larger offset failed the query (OverflowError, a 500).
OffsetQ = Annotated[int, Query(ge=0, le=2**63 - 1, description="Items to skip")]
LimitQ = Annotated[int, Query(ge=1, le=500, description="Page size (≤ 500)")]
ForceQ = Annotated[bool, Query(description="Stop the jobs using what is deleted first (else 409 naming them)")]
