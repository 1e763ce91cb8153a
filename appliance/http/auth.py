"""Optional token auth: when AISTUDIO_API_TOKEN is set every route but health, static files and
the login page needs `Authorization: Bearer <token>` or the HttpOnly cookie the login page sets."""

from __future__ import annotations

import secrets
from urllib.parse import quote

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse

from appliance.http.envelope import error_response

COOKIE_NAME = "aistudio_token"
OPEN_PATHS = ("/api/system/health", "/static/", "/login", "/favicon.ico")


def token_matches(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    supplied = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME, "")
    return bool(supplied) and secrets.compare_digest(supplied.encode(), token.encode())


class TokenAuthMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        if path.startswith(OPEN_PATHS) or token_matches(request, self.token):
            return await call_next(request)
        if path.startswith("/api/") or request.headers.get("HX-Request"):
            return error_response(401, "UNAUTHORIZED", "A valid API token is required (Authorization: Bearer …)")
        return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
