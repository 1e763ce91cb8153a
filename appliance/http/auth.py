"""Optional token auth: when AISTUDIO_API_TOKEN is set every route but health, static files and
the login page needs `Authorization: Bearer <token>` or the HttpOnly cookie the login page sets."""

from __future__ import annotations

import secrets
from urllib.parse import quote, unquote, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse

from appliance.http.envelope import error_response

COOKIE_NAME = "aistudio_token"
OPEN_PATHS = ("/api/system/health", "/login", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)
DEFAULT_NEXT = "/projects"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def token_matches(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    supplied = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME, "")
    return secrets.compare_digest(supplied.encode(), token.encode()) if supplied else False


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, else /projects.

    Browsers read `\\` as `/` and drop tabs and newlines, so `/\\evil.com` and `/\\t/evil.com` mean
    `//evil.com` (another host); a scheme (`https:evil.com`) or a host also leaves the site. The
    percent-decoded form is checked too, so `/%5Cevil.com` is refused with the others.
    """
    if not target:
        return DEFAULT_NEXT
    for form in (target, unquote(target)):
        if not form.startswith("/") or form.startswith("//") or "\\" in form:
            return DEFAULT_NEXT
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in form):
            return DEFAULT_NEXT
        parts = urlsplit(form)
        if parts.scheme or parts.netloc:
            return DEFAULT_NEXT
    return target


class TokenAuthMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        if is_open(path) or token_matches(request, self.token):
            return await call_next(request)
        if path.startswith("/api/") or request.headers.get("HX-Request"):
            return error_response(401, "UNAUTHORIZED", "A valid API token is required (Authorization: Bearer …)")
        return RedirectResponse(f"/login?next={quote(safe_next(path))}", status_code=303)
