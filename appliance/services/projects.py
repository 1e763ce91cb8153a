"""Project CRUD. Deleting a project removes its rows (cascade) and its folder."""

from __future__ import annotations

import shutil

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.errors import Conflict, NotFound
from appliance.store.ids import check_id, new_id
from appliance.store.tables import Evaluation, Experiment, Export, Image, ImportJob, Project
from appliance.store.paths import Workspace
from appliance.schemas import ProjectCreate, ProjectPublic, ProjectUpdate

ACTIVE = ("queued", "running")


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


def to_public(session: Session, project: Project) -> ProjectPublic:
    images = session.scalar(select(func.count()).select_from(Image).where(Image.project_id == project.id))
    experiments = session.scalar(
        select(func.count()).select_from(Experiment).where(Experiment.project_id == project.id)
    )
    return ProjectPublic.model_validate(
        {**_columns(project), "image_count": images or 0, "experiment_count": experiments or 0}
    )


def _columns(row) -> dict:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def list_projects(session: Session, offset: int, limit: int) -> tuple[list[ProjectPublic], int]:
    total = session.scalar(select(func.count()).select_from(Project)) or 0
    rows = session.scalars(select(Project).order_by(Project.created_at.desc()).offset(offset).limit(limit))
    return [to_public(session, p) for p in rows], total


def create_project(session: Session, workspace: Workspace, body: ProjectCreate) -> ProjectPublic:
    project = Project(id=new_id("project"), name=body.name, task=body.task, description=body.description)
    session.add(project)
    session.commit()
    workspace.images_dir(project.id).mkdir(parents=True, exist_ok=True)
    return to_public(session, project)


def update_project(session: Session, project_id: str, body: ProjectUpdate) -> ProjectPublic:
    project = get_project(session, project_id)
    for field, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(project, field, value)
    session.commit()
    return to_public(session, project)


def running_jobs(session: Session, project_id: str) -> list[str]:
    """Ids of the project's jobs that are queued or running (they block deletion)."""
    found: list[str] = []
    for model in (ImportJob, Experiment, Evaluation, Export):
        found += session.scalars(
            select(model.id).where(model.project_id == project_id, model.status.in_(ACTIVE))
        ).all()
    return found


def delete_project(session: Session, workspace: Workspace, project_id: str) -> None:
    project = get_project(session, project_id)
    busy = running_jobs(session, project_id)
    if busy:
        raise Conflict(f"Project {project_id} has running jobs ({', '.join(busy)}); stop them first")
    session.delete(project)
    session.commit()
    shutil.rmtree(workspace.project_dir(project_id), ignore_errors=True)
