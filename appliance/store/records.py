"""Finding a project's records by id — the one ownership check, shared by the web side and the
job entrypoints — and the one way to move a job record between states when others may race."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from appliance.store.errors import NotFound
from appliance.store.ids import check_id
from appliance.store.tables import Project


def get_project(session: Session, project_id: str) -> Project:
    check_id("project", project_id)
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"Project {project_id} not found")
    return project


def get_owned(session: Session, model, kind: str, project_id: str, record_id: str):
    """A row of `model` that belongs to the project; NotFound (never a lookup) for a malformed id,
    and NotFound for another project's row, so ids can't be probed across projects."""
    get_project(session, project_id)
    check_id(kind, record_id)
    row = session.get(model, record_id)
    if row is None or row.project_id != project_id:
        raise NotFound(f"{kind.capitalize()} {record_id} not found")
    return row


def move_status(session: Session, model, record_id: str, expected: str, **values) -> bool:
    """Set `values` on the record only while its status is still `expected` (one conditional
    UPDATE, committed); False when it was not — another process moved it first."""
    moved = session.execute(
        update(model).where(model.id == record_id, model.status == expected).values(**values)
    ).rowcount
    session.commit()
    return bool(moved)
