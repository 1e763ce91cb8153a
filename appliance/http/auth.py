"""Optional token auth: when AISTUDIO_API_TOKEN is set every route but health, static files and
the login/logout pages needs `Authorization: Bearer <token>` or the session cookie the login page sets.

The cookie never holds the token. Signing in creates a random session id; the database keeps only
its SHA-256 (table `login_sessions`, with an expiry), the cookie holds `<id>.<HMAC-SHA256 of the id>`.
The HMAC key is derived from the token, so changing AISTUDIO_API_TOKEN invalidates every session;
logging out deletes the row, so the old cookie stops working at once. The cookie is HttpOnly,
SameSite=Strict and `Secure` when the request came over HTTPS (its own scheme, or
`X-Forwarded-Proto: https` from a TLS-terminating proxy — the header can only add the flag).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import quote, unquote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from appliance.http.envelope import error_response
from appliance.store import login_sessions

COOKIE_NAME = "aistudio_session"
OPEN_PATHS = ("/api/system/health", "/login", "/logout", "/favicon.ico")
# `/models/`: prediction endpoints are their own Serve applications guarding themselves with their key; the
# ingress has no route there, so what reaches it is an endpoint not (or no longer) deployed: a plain 404.
OPEN_PREFIXES = ("/static/", "/models/")
DEFAULT_NEXT = "/projects"
_KEY_LABEL = b"aistudio login-session cookie v1"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def token_matches(request: Request, token: str) -> bool:
    """The `Authorization: Bearer` header carries the token (compared in constant time)."""
    header = request.headers.get("authorization", "")
    supplied = header[7:] if header.lower().startswith("bearer ") else ""
    return secrets.compare_digest(supplied.encode(), token.encode()) if supplied else False


def _signature(session_id: str, token: str) -> str:
    key = hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()
    mac = hmac.new(key, session_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign_session(session_id: str, token: str) -> str:
    return f"{session_id}.{_signature(session_id, token)}"


def unsign_session(cookie: str, token: str) -> str | None:
    """The session id of a cookie whose signature is right, else None (no database look-up)."""
    session_id, dot, signature = cookie.rpartition(".")
    if not dot or not session_id or not signature:
        return None
    expected = _signature(session_id, token)
    return session_id if secrets.compare_digest(signature.encode(), expected.encode()) else None


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def start_session(db, request: Request, response: Response, token: str, max_age_s: int) -> None:
    """Sign in: store a new session and set its signed cookie on the response."""
    session_id = secrets.token_urlsafe(32)
    login_sessions.create(db, session_id, max_age_s)
    response.set_cookie(COOKIE_NAME, sign_session(session_id, token), max_age=max_age_s, path="/",
                        secure=is_https(request), httponly=True, samesite="strict")


def end_session(db, request: Request, response: Response, token: str | None) -> None:
    """Log out: delete the request's session server-side (if its cookie is genuine), clear the cookie."""
    session_id = unsign_session(request.cookies.get(COOKIE_NAME, ""), token) if token else None
    if session_id:
        login_sessions.delete_session(db, session_id)
    response.delete_cookie(COOKIE_NAME, path="/", secure=is_https(request), httponly=True, samesite="strict")


def _session_is_valid(request: Request, session_id: str) -> bool:
    factory = getattr(request.app.state, "sessions", None)
    if factory is None:  # an app without the database (unit tests): no cookie can be valid
        return False
    with factory() as db:
        return login_sessions.is_valid(db, session_id)


async def session_cookie_matches(request: Request, token: str) -> bool:
    session_id = unsign_session(request.cookies.get(COOKIE_NAME, ""), token)
    return bool(session_id) and await run_in_threadpool(_session_is_valid, request, session_id)


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
        if is_open(path):
            return await call_next(request)
        if token_matches(request, self.token) or await session_cookie_matches(request, self.token):
            response = await call_next(request)
            # Whatever needed the token is for this user only: no shared cache may keep it.
            if "cache-control" not in response.headers:
                response.headers["Cache-Control"] = "private"
            return response
        if path.startswith("/api/") or request.headers.get("HX-Request"):
            return error_response(401, "UNAUTHORIZED", "A valid API token is required (Authorization: Bearer …)")
        return RedirectResponse(f"/login?next={quote(safe_next(path))}", status_code=303)
