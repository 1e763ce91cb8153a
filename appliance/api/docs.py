"""`/docs` (Swagger UI) from vendored assets and `/favicon.ico`: nothing here needs the internet.

FastAPI's own `/docs` loads Swagger UI from a CDN (blank on an offline appliance); ReDoc, CDN-only
too, is switched off (`redoc_url=None` in main.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from appliance.web import PACKAGE_DIR

router = APIRouter(include_in_schema=False)

SWAGGER_UI = "/static/vendor/swagger-ui-5.35.0"  # swagger-ui-dist 5.35.0 (npm), Apache-2.0: LICENSE beside it
FAVICON = PACKAGE_DIR / "static" / "favicon.ico"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for the OpenAPI schema, every asset served by the appliance."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title} — API docs",
        swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js", swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url="/static/favicon.svg",
    )


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """Browsers ask for it on every page that names none (and on JSON responses)."""
    return FileResponse(FAVICON, media_type="image/vnd.microsoft.icon")
