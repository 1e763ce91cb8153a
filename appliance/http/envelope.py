"""The one envelope: `{"status":"ok","data":…}` or `{"status":"error","error":{code,message}}`.

`install_error_handlers` makes every error — ours, FastAPI's 404/405/422 and unexpected
exceptions — leave the app in that shape.
"""

from __future__ import annotations

import logging
import uuid
from typing import Generic, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.store.errors import AppError

log = logging.getLogger("aistudio")
T = TypeVar("T")

_HTTP_CODES = {
    400: "VALIDATION_ERROR", 401: "UNAUTHORIZED", 403: "FORBIDDEN_PATH", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 422: "VALIDATION_ERROR",
    429: "TOO_MANY_REQUESTS", 503: "UNAVAILABLE",
}


class Envelope(BaseModel, Generic[T]):
    status: Literal["ok"] = "ok"
    data: T


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


class CursorPage(Page[T], Generic[T]):
    """A page of a keyset-paginated list: pass `next_cursor` as `cursor` for the next page."""

    next_cursor: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    status: Literal["error"] = "error"
    error: ErrorBody


def ok(data) -> Envelope:
    return Envelope(data=data)


def error_response(status_code: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = ErrorEnvelope(error=ErrorBody(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # loc is ("body", <character offset>): name the body
            detail = (err.get("ctx") or {}).get("error", "")
            parts.append(f"body: invalid JSON at character {err['loc'][-1]}" + (f" ({detail})" if detail else ""))
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        field = ".".join(loc) or "body"
        parts.append(f"{field}: {_plain(err)}")
    return "Invalid request — " + "; ".join(parts)


# Pydantic's wording ("Input should be greater than or equal to 1", "Value error, …") in plain words,
# by error type; a type not listed keeps pydantic's message. (issue #13 item 13)
_PLAIN = {
    "missing": "is required", "extra_forbidden": "is not a field of this request",
    "string_too_long": "must be at most {max_length} characters", "string_type": "must be text",
    "greater_than_equal": "must be at least {ge}", "less_than_equal": "must be at most {le}",
    "greater_than": "must be more than {gt}", "less_than": "must be less than {lt}",
    "literal_error": "must be {expected}", "enum": "must be {expected}",
    "int_type": "must be a whole number", "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number", "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false", "list_type": "must be a list",
    "dict_type": "must be an object", "model_type": "must be an object", "model_attributes_type": "must be an object",
    "too_long": "must have at most {max_length} items", "too_short": "must have at least {min_length} items",
}


def _plain(err: dict) -> str:
    kind, ctx = err.get("type"), err.get("ctx") or {}
    if kind in ("too_long", "too_short") and isinstance(err.get("input"), str):
        # a length constraint on a text type with its own validator (schemas.StoredText) is reported as
        # a collection's: it is still a number of characters
        kind = f"string_{kind}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters"
    try:
        return _PLAIN[kind].format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})
    except (KeyError, IndexError):
        return err.get("msg", "invalid")


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = uuid.uuid4().hex[:12]
    return rid


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
        if exc.status_code == 413:  # the rest of the body is left unread: close instead of draining it
            headers["Connection"] = "close"
        return error_response(exc.status_code, exc.code, exc.message, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return error_response(422, "VALIDATION_ERROR", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "INTERNAL" if exc.status_code >= 500 else "VALIDATION_ERROR")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"Route {request.url.path} not found"
        if exc.status_code == 405:
            message = f"Method {request.method} not allowed on {request.url.path}"
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        rid = request_id(request)
        log.exception("Unhandled error (request %s) on %s %s", rid, request.method, request.url.path)
        return error_response(
            500, "INTERNAL", f"Internal error (request id {rid}); see the server log", headers={"X-Request-ID": rid}
        )
