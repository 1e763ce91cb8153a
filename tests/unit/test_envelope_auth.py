"""The envelope/errors layer and the token middleware on a bare FastAPI app (no lifespan, no
database, no Ray): every error leaves in `{"status":"error","error":{code,message}}` with the
status and code of docs/api.md, and the token guards every route but the open ones."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request as StarletteRequest

from appliance.store import errors
from appliance.http.auth import COOKIE_NAME, DEFAULT_NEXT, TokenAuthMiddleware, safe_next, token_matches
from appliance.http.envelope import Envelope, error_response, install_error_handlers, ok, request_id

# --------------------------------------------------------------------------- errors


# The spec's table (docs/api.md "Error codes and statuses are the spec's table").
@pytest.mark.parametrize("cls, code, status", [
    (errors.AppError, "INTERNAL", 500),
    (errors.NotFound, "NOT_FOUND", 404),
    (errors.ValidationFailed, "VALIDATION_ERROR", 422),
    (errors.InvalidDataset, "INVALID_DATASET", 400),
    (errors.Conflict, "CONFLICT", 409),
    (errors.PayloadTooLarge, "PAYLOAD_TOO_LARGE", 413),
    (errors.ForbiddenPath, "FORBIDDEN_PATH", 403),
    (errors.Unauthorized, "UNAUTHORIZED", 401),
    (errors.Unavailable, "UNAVAILABLE", 503),
])
def test_error_classes_map_to_code_and_status(cls, code, status):
    exc = cls("what went wrong")
    assert (exc.code, exc.status_code) == (code, status)
    assert exc.message == "what went wrong" and str(exc) == "what went wrong"
    assert isinstance(exc, errors.AppError)

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom():
        raise cls("what went wrong")

    r = TestClient(app).get("/boom")
    assert r.status_code == status
    assert r.json() == {"status": "error", "error": {"code": code, "message": "what went wrong"}}


# --------------------------------------------------------------------------- envelope


def test_ok_wraps_data():
    env = ok({"a": 1})
    assert isinstance(env, Envelope)
    assert env.model_dump() == {"status": "ok", "data": {"a": 1}}


def test_error_response_body_status_and_headers():
    r = error_response(409, "CONFLICT", "busy", headers={"Retry-After": "3"})
    assert r.status_code == 409
    assert r.body == b'{"status":"error","error":{"code":"CONFLICT","message":"busy"}}'
    assert r.headers["retry-after"] == "3"
    assert "retry-after" not in error_response(400, "X", "y").headers


class Part(BaseModel):
    weight: float


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int
    part: Part | None = None


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/items")
    def create(item: Item):
        return ok(item.model_dump())

    @app.post("/form")
    def form(count: int = Form()):
        return ok(count)

    @app.get("/items/{n}")
    def get(n: int, limit: int = 10):
        return ok({"n": n, "limit": limit})

    @app.get("/http/{status}")
    def http(status: int, dict_detail: bool = False):
        detail = {"why": "because"} if dict_detail else f"detail {status}"
        raise HTTPException(status, detail=detail, headers={"X-Extra": "yes"})

    @app.get("/crash")
    def crash(request: Request):
        request.state.request_id = "abc123abc123"
        raise RuntimeError("secret internals")

    @app.get("/crash-fresh")
    def crash_fresh():
        raise RuntimeError("secret internals")

    @app.get("/rid")
    def rid(request: Request):
        return ok([request_id(request), request_id(request)])

    return TestClient(app, raise_server_exceptions=False)


def test_validation_message_names_each_field(client):
    r = client.post("/items", json={"name": "x", "size": "big", "colour": "red"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR"
    assert err["message"].startswith("Invalid request — ")
    parts = err["message"].removeprefix("Invalid request — ").split("; ")
    assert [p.split(": ")[0] for p in parts] == ["size", "colour"]  # the field, without "body."
    # each field carries what is wrong in plain words, not pydantic's wording (issue #13 item 13;
    # tests/unit/test_human_messages.py covers the other error types)
    with pytest.raises(ValidationError) as caught:
        Item.model_validate({"name": "x", "size": "big", "colour": "red"})
    assert [e["type"] for e in caught.value.errors()] == ["int_parsing", "extra_forbidden"]
    assert [p.split(": ", 1)[1] for p in parts] == ["must be a whole number", "is not a field of this request"]


def test_validation_of_query_and_path_names_the_parameter(client):
    err = client.get("/items/seven?limit=many").json()["error"]
    fields = [p.split(": ")[0] for p in err["message"].removeprefix("Invalid request — ").split("; ")]
    assert fields == ["n", "limit"]


def test_validation_of_nested_and_form_fields(client):
    r = client.post("/items", json={"name": "x", "size": 1, "part": {"weight": "heavy"}})
    assert r.json()["error"]["message"].startswith("Invalid request — part.weight: ")
    r = client.post("/form", data={"count": "many"})
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("Invalid request — count: ")


def test_validation_of_a_missing_body_names_the_body(client):
    r = client.post("/items", content=b"")
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("Invalid request — body: ")


def test_unknown_route_and_method(client):
    r = client.get("/nowhere")
    assert r.status_code == 404
    assert r.json() == {"status": "error", "error": {"code": "NOT_FOUND", "message": "Route /nowhere not found"}}
    r = client.delete("/items")
    assert r.status_code == 405
    assert r.json()["error"] == {"code": "METHOD_NOT_ALLOWED", "message": "Method DELETE not allowed on /items"}


@pytest.mark.parametrize("status, code", [
    (400, "VALIDATION_ERROR"), (401, "UNAUTHORIZED"), (403, "FORBIDDEN_PATH"), (404, "NOT_FOUND"),
    (409, "CONFLICT"), (413, "PAYLOAD_TOO_LARGE"), (422, "VALIDATION_ERROR"), (503, "UNAVAILABLE"),
    (418, "VALIDATION_ERROR"),  # an unlisted 4xx
    (500, "INTERNAL"), (502, "INTERNAL"),  # an unlisted 5xx
])
def test_http_exceptions_keep_status_detail_and_headers(client, status, code):
    r = client.get(f"/http/{status}")
    assert r.status_code == status
    assert r.json() == {"status": "error", "error": {"code": code, "message": f"detail {status}"}}
    assert r.headers["x-extra"] == "yes"


def test_http_exception_with_a_structured_detail(client):
    r = client.get("/http/409?dict_detail=true")
    assert r.json()["error"] == {"code": "CONFLICT", "message": "{'why': 'because'}"}


def test_unexpected_error_is_internal_with_the_request_id(client, caplog):
    r = client.get("/crash")
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "abc123abc123"
    assert r.json()["error"] == {
        "code": "INTERNAL", "message": "Internal error (request id abc123abc123); see the server log",
    }
    assert "secret internals" not in r.text
    logged = [rec for rec in caplog.records if rec.name == "aistudio" and rec.levelname == "ERROR"]
    assert logged and "abc123abc123" in logged[-1].getMessage() and "/crash" in logged[-1].getMessage()
    assert logged[-1].exc_info is not None


def test_unexpected_error_makes_a_request_id_when_none_was_set(client):
    r = client.get("/crash-fresh")
    rid = r.headers["x-request-id"]
    assert len(rid) == 12 and int(rid, 16) >= 0
    assert f"(request id {rid})" in r.json()["error"]["message"]


def test_request_id_is_stable_within_a_request_and_new_per_request(client):
    first, again = client.get("/rid").json()["data"]
    assert first == again and len(first) == 12
    assert client.get("/rid").json()["data"][0] != first


# --------------------------------------------------------------------------- token auth

TOKEN = "s3cret-token"


def request_with(headers: dict[str, str]) -> StarletteRequest:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return StarletteRequest({"type": "http", "method": "GET", "path": "/", "headers": raw})


@pytest.mark.parametrize("headers, expected", [
    ({"Authorization": f"Bearer {TOKEN}"}, True),
    ({"Authorization": f"bearer {TOKEN}"}, True),
    ({"Authorization": f"BEARER {TOKEN}"}, True),
    ({"Authorization": f"Bearer {TOKEN}x"}, False),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, False),
    ({"Authorization": f"Bearer  {TOKEN}"}, False),
    ({"Authorization": TOKEN}, False),
    ({"Authorization": f"Basic {TOKEN}"}, False),
    ({"Authorization": "Bearer "}, False),
    ({}, False),
    ({"Cookie": f"{COOKIE_NAME}={TOKEN}"}, False),  # the cookie holds a signed session id, never the token
    ({"Cookie": f"{COOKIE_NAME}=wrong"}, False),
    ({"Cookie": f"other={TOKEN}"}, False),
    ({"Cookie": f"{COOKIE_NAME}="}, False),
])
def test_token_matches(headers, expected):
    assert token_matches(request_with(headers), TOKEN) is expected


def test_token_matches_non_ascii_without_error():
    assert token_matches(request_with({"Cookie": f"{COOKIE_NAME}=été"}), TOKEN) is False


@pytest.fixture
def guarded() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(TokenAuthMiddleware, token=TOKEN)
    for path in ("/api/system/health", "/api/projects", "/static/app.css", "/login", "/favicon.ico",
                 "/projects/a b", "/"):
        app.add_api_route(path, lambda: PlainTextResponse("inside"), methods=["GET"])
    return TestClient(app, follow_redirects=False)


@pytest.mark.parametrize("path", ["/api/system/health", "/static/app.css", "/login", "/favicon.ico"])
def test_open_paths_need_no_token(guarded, path):
    r = guarded.get(path)
    assert (r.status_code, r.text) == (200, "inside")


def test_api_without_token_is_401_envelope(guarded):
    r = guarded.get("/api/projects")
    assert r.status_code == 401
    assert r.json()["status"] == "error" and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert r.json()["error"]["message"].startswith("A valid API token is required (Authorization: Bearer")
    assert guarded.get("/api/projects", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_api_with_token_not_with_the_token_as_cookie(guarded):
    """A signed session cookie is checked against the database (tests/hostile/test_login.py)."""
    assert guarded.get("/api/projects", headers={"Authorization": f"Bearer {TOKEN}"}).text == "inside"
    guarded.cookies.set(COOKIE_NAME, TOKEN)
    assert guarded.get("/api/projects").status_code == 401
    assert guarded.get("/projects/a b").status_code == 303


def test_page_without_token_redirects_to_login_with_next(guarded):
    r = guarded.get("/projects/a b")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/projects/a%20b"
    assert guarded.get("/").headers["location"] == "/login?next=/"


def test_htmx_request_without_token_is_401_not_a_redirect(guarded):
    r = guarded.get("/projects/a b", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


def test_invalid_json_names_the_character_and_the_parser_message(client):
    body = b'{"name": "x", "size": }'
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads(body)
    r = client.post("/items", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        f"Invalid request — body: invalid JSON at character {caught.value.pos} ({caught.value.msg})"
    )


@pytest.mark.parametrize("target, expected", [
    (None, DEFAULT_NEXT),
    ("", DEFAULT_NEXT),
    ("/projects/p1?tab=runs", "/projects/p1?tab=runs"),
    ("/a%20b", "/a%20b"),
    ("evil.com", DEFAULT_NEXT),
    ("https:evil.com", DEFAULT_NEXT),
    ("//evil.com", DEFAULT_NEXT),
    ("///evil.com", DEFAULT_NEXT),
    ("/\\evil.com", DEFAULT_NEXT),
    ("/%5Cevil.com", DEFAULT_NEXT),
    ("/%2F%2Fevil.com", DEFAULT_NEXT),
    ("/\tevil", DEFAULT_NEXT),
    ("/\x01x", DEFAULT_NEXT),
    ("/\x7fx", DEFAULT_NEXT),
    ("/%7Fx", DEFAULT_NEXT),
    ("/~x", "/~x"),
])
def test_safe_next_stays_on_the_site(target, expected):
    assert safe_next(target) == expected
