"""Project CRUD. Deleting a project removes its rows (cascade) and its folder, once no job uses it."""

from __future__ import annotations

import shutil

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.ids import new_id
from appliance.store.records import get_owned, get_project  # noqa: F401 (services find records through here)
from appliance.store.tables import Experiment, Image, Project
from appliance.store.paths import Workspace
from appliance.services import deletion
from appliance.schemas import ProjectCreate, ProjectPublic, ProjectUpdate

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


def delete_project(session: Session, workspace: Workspace, project_id: str, force: bool = False) -> None:
    project = get_project(session, project_id)
    from appliance.services.deployments import refuse_if_served

    refuse_if_served(session, f"Project {project_id}", project_id=project_id)
    deletion.clear_the_way(session, f"Project {project_id}", deletion.project_jobs(session, project_id), force)
    experiment_ids = session.scalars(select(Experiment.id).where(Experiment.project_id == project_id)).all()
    session.delete(project)
    session.commit()
    shutil.rmtree(workspace.project_dir(project_id), ignore_errors=True)
    for experiment_id in experiment_ids:  # Ray Train's own folders live outside the project's
        shutil.rmtree(workspace.ray_results_dir / experiment_id, ignore_errors=True)
