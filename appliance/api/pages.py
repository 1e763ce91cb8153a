"""HTML pages (Jinja2 + HTMX). Data comes from the JSON/fragment API routes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse

from appliance.api.deps import ProjectId, SessionDep, SettingsDep
from appliance.core.auth import COOKIE_NAME
from appliance.services import projects as project_service
from appliance.web import render

router = APIRouter(include_in_schema=False)

Section = Literal["dataset", "split", "training", "evaluation", "export"]
SECTIONS = [
    ("dataset", "Dataset"), ("split", "Split"), ("training", "Training"),
    ("evaluation", "Evaluation"), ("export", "Export"),
]
# Sections whose page is written; the others say plainly that they are not built yet.
BUILT: set[str] = set()


@router.get("/")
def index():
    return RedirectResponse("/projects", status_code=307)


@router.get("/projects")
def projects_page(request: Request, session: SessionDep):
    items, _ = project_service.list_projects(session, 0, 500)
    return render(request, "pages/projects.html", projects=items, sections=SECTIONS)


@router.get("/projects/{project_id}/{section}")
def project_section(request: Request, project_id: ProjectId, section: Section, session: SessionDep):
    project = project_service.get_project(session, project_id)
    template = f"pages/{section}.html" if section in BUILT else "pages/not_built.html"
    return render(request, template, project=project, section=section, sections=SECTIONS)


@router.get("/login")
def login_page(request: Request, next: str = "/projects"):
    return render(request, "pages/login.html", next=next, error=None)


@router.post("/login")
def login(request: Request, settings: SettingsDep, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/projects"):
    if not settings.api_token or token != settings.api_token:
        return render(request, "pages/login.html", status_code=401, next=next, error="That token is not valid.")
    target = next if next.startswith("/") and not next.startswith("//") else "/projects"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="strict")
    return response
