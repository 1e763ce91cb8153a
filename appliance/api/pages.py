"""HTML pages (Jinja2 + HTMX). Data comes from the JSON/fragment API routes."""

from __future__ import annotations

import importlib.util
import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse

from appliance.http.deps import ProjectId, SessionDep, SettingsDep
from appliance.http.auth import DEFAULT_NEXT, end_session, safe_next, start_session
from appliance.store.status import EVALUABLE
from appliance.services import datasets as dataset_service
from appliance.services import evaluation as evaluation_service
from appliance.services import export as export_service
from appliance.services import projects as project_service
from appliance.services import splits as split_service
from appliance.services import system as system_service
from appliance.services import training as training_service
from appliance.services.ray_runtime import cluster_gpus
from appliance.web import render

router = APIRouter(include_in_schema=False)

Section = Literal["dataset", "split", "training", "evaluation", "export", "deploy"]
SECTIONS = [
    ("dataset", "Dataset"), ("split", "Split"), ("training", "Training"),
    ("evaluation", "Evaluation"), ("export", "Export"), ("deploy", "Deploy"),
]
# Sections whose page is written; the others say plainly that they are not built yet.
BUILT: set[str] = {"dataset", "split", "training", "evaluation", "export", "deploy"}
GRID_PAGE = 48  # thumbnails per grid page (a multiple of the 4, 6 and 8 column layouts)


def _dataset_context(session, project_id: str, settings) -> dict:
    summary = dataset_service.summary(session, project_id, settings.near_duplicate_distance)
    page = dataset_service.list_images(session, project_id, 0, GRID_PAGE)
    return {
        "summary": summary, "splits": split_service.list_splits(session, project_id),
        "images": page.items, "total": page.total, "offset": 0, "limit": GRID_PAGE,
        "label": "", "split_id": "", "subset": "", "job": summary["last_import"],
        "next_cursor": page.next_cursor, "cursor": "",
    }


def _split_context(session, project_id: str, settings) -> dict:
    return {"splits": split_service.list_splits(session, project_id),
            "summary": dataset_service.summary(session, project_id, settings.near_duplicate_distance),
            "source_subsets": split_service.source_subsets(session, project_id)}


def _training_context(session, project_id: str, settings) -> dict:
    project = project_service.get_project(session, project_id)
    models = [{**m, "weights_available": (settings.weights_cache / m["weights_file"]).is_file()}
              for m in training_service.catalog(project.task)]
    return {"models": models, "splits": split_service.list_splits(session, project_id),
            "experiments": training_service.list_experiments(session, project_id),
            "training_gpus": cluster_gpus()}  # what a run would get: mixed precision needs one




def _evaluation_context(session, project_id: str, settings=None) -> dict:
    experiments = training_service.list_experiments(session, project_id)
    return {"experiments": experiments,
            "trained": [e for e in experiments if e["status"] in EVALUABLE and (e["epochs_done"] or 0) > 0],
            "evaluations": evaluation_service.list_evaluations(session, project_id)}


def _export_context(session, project_id: str, settings=None) -> dict:
    experiments = training_service.list_experiments(session, project_id)
    return {"trained": [e for e in experiments if e["status"] in EVALUABLE and (e["epochs_done"] or 0) > 0],
            "exports": export_service.list_exports(session, project_id),
            "gpu": system_service.gpus(),
            # Cheap presence check only (no import): the API gives the precise reason when it refuses.
            "tensorrt_installed": importlib.util.find_spec("tensorrt") is not None,
            "tensorrt_refused": _tensorrt_refused()}


def _tensorrt_refused() -> str | None:
    """Why this host refuses TensorRT exports (the option is then disabled), or None when it may
    build them; cheap checks only — the API still gives the precise reason if it refuses anyway."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed on this host (the [gpu] extra, in the Docker image)"
    if cluster_gpus() <= 0:
        return "the Ray cluster has no GPU to build a TensorRT engine on"
    return None


def _deploy_context(session, project_id: str, settings=None) -> dict:
    exports = [e for e in export_service.list_exports(session, project_id) if e["status"] == "completed"]
    return {"exports": exports, "gpu": system_service.gpus()}


CONTEXT = {"dataset": _dataset_context, "split": _split_context, "evaluation": _evaluation_context,
           "export": _export_context, "deploy": _deploy_context}


@router.get("/")
def index():
    return RedirectResponse("/projects", status_code=307)


@router.get("/projects")
def projects_page(request: Request, session: SessionDep):
    items, _ = project_service.list_projects(session, 0, 500)
    return render(request, "pages/projects.html", projects=items, sections=SECTIONS)


@router.get("/projects/{project_id}/{section}")
def project_section(request: Request, project_id: ProjectId, section: Section, session: SessionDep,
                    settings: SettingsDep):
    project = project_service.get_project(session, project_id)
    template = f"pages/{section}.html" if section in BUILT else "pages/not_built.html"
    extra = CONTEXT[section](session, project_id, settings) if section in BUILT and section in CONTEXT else {}
    if section == "training":
        extra = _training_context(session, project_id, settings)
    return render(request, template, project=project, section=section, sections=SECTIONS, project_id=project_id,
                  **extra)


@router.get("/login")
def login_page(request: Request, next: str = DEFAULT_NEXT):
    return render(request, "pages/login.html", next=safe_next(next), error=None)


@router.post("/login")
def login(request: Request, session: SessionDep, settings: SettingsDep, token: Annotated[str, Form()],
          next: Annotated[str, Form()] = DEFAULT_NEXT):
    if not settings.api_token or not secrets.compare_digest(token.encode(), settings.api_token.encode()):
        return render(request, "pages/login.html", status_code=401, next=safe_next(next), error="That token is not valid.")
    response = RedirectResponse(safe_next(next), status_code=303)
    start_session(session, request, response, settings.api_token, settings.session_max_age_s)
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, settings: SettingsDep):
    """Delete this browser's session server-side and clear its cookie (open: logging out needs no token)."""
    response = RedirectResponse("/login" if settings.api_token else DEFAULT_NEXT, status_code=303)
    end_session(session, request, response, settings.api_token)
    return response
