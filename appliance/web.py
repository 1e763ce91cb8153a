"""Jinja2 templates shared by the page routes and the HTMX fragments of API routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from appliance import __version__
from appliance.http.auth import COOKIE_NAME

PACKAGE_DIR = Path(__file__).parent
templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
templates.env.globals["version"] = __version__


def _security(request: Request) -> dict:
    """What base.html shows about access: the logout button, the network-exposure banner."""
    settings = getattr(request.app.state, "settings", None)
    token_mode = bool(settings and settings.api_token)
    return {"token_mode": token_mode, "signed_in": token_mode and COOKIE_NAME in request.cookies,
            "exposed": bool(settings and settings.exposed_without_token)}


templates.context_processors.append(_security)


def wants_fragment(request: Request) -> bool:
    """HTMX sends `HX-Request: true`; such callers get HTML, everyone else JSON."""
    return request.headers.get("hx-request", "").lower() == "true"


def render(request: Request, template: str, status_code: int = 200, **context):
    return templates.TemplateResponse(request, template, context, status_code=status_code)
