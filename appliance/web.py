"""Jinja2 templates shared by the page routes and the HTMX fragments of API routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from appliance import __version__

PACKAGE_DIR = Path(__file__).parent
templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
templates.env.globals["version"] = __version__


def wants_fragment(request: Request) -> bool:
    """HTMX sends `HX-Request: true`; such callers get HTML, everyone else JSON."""
    return request.headers.get("hx-request", "").lower() == "true"


def render(request: Request, template: str, status_code: int = 200, **context):
    return templates.TemplateResponse(request, template, context, status_code=status_code)
