"""Issue #12, item 12: login.

The browser's cookie carries a random session id with an HMAC signature, never the token; the
database keeps only the id's SHA-256 and an expiry. A forged, tampered, unknown, expired or
logged-out cookie is refused (401 envelope for the API, the sign-in redirect for pages); changing
the token invalidates every session. The cookie is HttpOnly, SameSite=Strict and `Secure` over
HTTPS (or behind a proxy that says `X-Forwarded-Proto: https`). Responses behind the token — images
and thumbnails included — are `Cache-Control: private`. The `next` guard's tests live in
tests/api/test_token_mode.py and tests/unit/test_envelope_auth.py.

Through the real Serve ingress (the session server runs in token mode) where the cookie's trip
matters; the HTTPS, expiry and token-change cases in-process.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient

from tests.fixtures import create_project, list_all_images, make_classification_folder, wait_import
from tests.htmlq import parse

TOKEN = "s3cret-token"


def sign_in(http, token: str, **kwargs):
    r = http.post("/login", data={"token": token, "next": "/projects"}, **kwargs)
    assert r.status_code == 303 and r.headers["location"] == "/projects", (r.status_code, r.text[:200])
    return r


def set_cookie(r) -> tuple[str, str, str]:
    """(name, value, the whole Set-Cookie line lower-cased) of the response's one cookie."""
    lines = r.headers.get_list("set-cookie")
    assert len(lines) == 1, lines
    jar = SimpleCookie()
    jar.load(lines[0])
    (name, morsel), = jar.items()
    return name, morsel.value, lines[0].lower()


def stored_hashes(db_url: str) -> set[str]:
    from sqlalchemy import text

    from appliance.store.db import session_scope

    with session_scope(db_url) as s:
        return {row[0] for row in s.execute(text("select id_hash from login_sessions"))}


def assert_unauthorized(client, cookie_name: str, value: str):
    client.cookies.clear()
    client.cookies.set(cookie_name, value)
    r = client.get("/api/projects")
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED", (value, r.status_code)
    r = client.get("/projects")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/projects", (value, r.status_code)
    client.cookies.clear()


# --------------------------------------------------------------------------- through Serve


@pytest.mark.ray
def test_the_cookie_is_a_signed_session_id_not_the_token(server):
    with server.anon(follow_redirects=False) as anon:
        name, value, line = set_cookie(sign_in(anon, server.token))
        assert server.token not in value and server.token not in line
        session_id, dot, signature = value.rpartition(".")
        assert dot and len(session_id) >= 32 and len(signature) >= 32, value
        # the database holds the id's hash only: neither the id nor the cookie nor the token
        hashes = stored_hashes(server.settings.db_url)
        assert hashlib.sha256(session_id.encode()).hexdigest() in hashes
        assert not {session_id, value, server.token} & hashes
        assert "httponly" in line and "samesite=strict" in line and "path=/" in line
        assert "secure" not in line.replace("samesite", "")  # plain http here
        assert anon.get("/api/projects").status_code == 200
        assert anon.get("/projects").status_code == 200

        # a second sign-in is a second, different session
        _, other, _ = set_cookie(sign_in(anon, server.token))
        assert other != value


@pytest.mark.ray
def test_forged_and_tampered_cookies_are_refused(server):
    from appliance.http.auth import COOKIE_NAME, sign_session

    with server.anon(follow_redirects=False) as anon:
        _, value, _ = set_cookie(sign_in(anon, server.token))
    session_id, _, signature = value.rpartition(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    forged = [
        server.token,                                   # the old cookie's content: the raw token
        session_id,                                     # the id without its signature
        f"{session_id}.",                               # an empty signature
        f"{session_id}.{flipped}",                      # one character of the signature changed
        f"{session_id[:-1]}x.{signature}",              # the id changed, the signature kept
        sign_session(session_id, server.token + "x"),   # signed with another key
        sign_session(secrets.token_urlsafe(32), server.token),  # a genuine signature of an unknown id
        f"{value}.{signature}", "", ".", "%C3%A9.%C3%A9",
    ]
    with server.anon(follow_redirects=False) as anon:
        for cookie in forged:
            assert_unauthorized(anon, COOKIE_NAME, cookie)
        anon.cookies.set("aistudio_token", server.token)  # the old cookie name with the token in it
        assert anon.get("/api/projects").status_code == 401
        anon.cookies.clear()
        anon.cookies.set(COOKIE_NAME, value)  # the genuine one still works
        assert anon.get("/api/projects").status_code == 200


@pytest.mark.ray
def test_logout_ends_the_session_on_the_server(server):
    from appliance.http.auth import COOKIE_NAME

    with server.anon(follow_redirects=False) as anon:
        _, value, _ = set_cookie(sign_in(anon, server.token))
        session_hash = hashlib.sha256(value.rpartition(".")[0].encode()).hexdigest()
        page = parse(anon.get("/projects").text)
        form = page.select_one("header form#logout")
        assert form is not None and form.attrs["action"] == "/logout" and form.attrs["method"] == "post"
        r = anon.post("/logout")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        name, cleared, line = set_cookie(r)
        assert name == COOKIE_NAME and cleared == "" and "max-age=0" in line
        assert session_hash not in stored_hashes(server.settings.db_url)
        assert anon.get("/api/projects").status_code == 401  # the browser dropped it
    # a copy of the old cookie (kept by an attacker, or a second tab) no longer works either
    with server.anon(follow_redirects=False) as replay:
        assert_unauthorized(replay, COOKIE_NAME, value)
        # logging out again, or without any session, is harmless
        assert replay.post("/logout").status_code == 303


@pytest.mark.ray
def test_secure_cookie_behind_a_tls_proxy_through_serve(server):
    with server.anon(follow_redirects=False) as anon:
        _, _, line = set_cookie(sign_in(anon, server.token, headers={"X-Forwarded-Proto": "https"}))
        assert "; secure" in line
        r = anon.post("/logout", headers={"X-Forwarded-Proto": "https"})
        assert "; secure" in set_cookie(r)[2]


@pytest.mark.ray
def test_images_and_thumbnails_behind_the_token_are_private(server):
    pid = create_project(server.http, name="private-cache")
    source = make_classification_folder(server.import_root / "private-cache", ["red", "blue"], per_class=1, size=48).root
    r = server.http.post("/api/datasets/import/local", json={"project_id": pid, "source_path": str(source)})
    assert r.status_code == 202, r.text
    wait_import(server.http, pid, r.json()["data"]["id"], timeout=120)
    image = list_all_images(server.http, pid)[0]
    try:
        for url in (image["url"], image["thumbnail_url"]):
            r = server.http.get(url)
            assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), url
            directives = {d.strip() for d in r.headers["cache-control"].split(",")}
            assert "private" in directives and "public" not in directives, r.headers["cache-control"]
            assert "immutable" in directives  # content-addressed: the browser may keep it for good
        for url in ("/api/projects", f"/api/datasets/{pid}", "/projects"):
            assert "private" in server.http.get(url).headers.get("cache-control", ""), url
        with server.anon() as anon:  # the open health route is not marked
            assert "private" not in anon.get("/api/system/health").headers.get("cache-control", "")
    finally:
        server.http.delete(f"/api/projects/{pid}")


# --------------------------------------------------------------------------- in-process


@pytest.fixture
def token_app(settings):
    from appliance.main import create_app

    settings.api_token = TOKEN
    return create_app(settings)


@pytest.mark.parametrize("base_url, headers", [("https://testserver", {}),
                                               ("http://testserver", {"X-Forwarded-Proto": "https"}),
                                               ("http://testserver", {"X-Forwarded-Proto": "https, http"})])
def test_secure_cookie_over_https(token_app, base_url, headers):
    with TestClient(token_app, base_url=base_url, follow_redirects=False) as c:
        _, _, line = set_cookie(sign_in(c, TOKEN, headers=headers))
        assert "; secure" in line and "httponly" in line and "samesite=strict" in line


@pytest.mark.parametrize("headers", [{}, {"X-Forwarded-Proto": "http"}, {"X-Forwarded-Proto": "httpsx"}])
def test_no_secure_flag_over_plain_http(token_app, headers):
    with TestClient(token_app, follow_redirects=False) as c:
        _, _, line = set_cookie(sign_in(c, TOKEN, headers=headers))
        assert "; secure" not in line


def test_an_expired_session_is_refused(token_app, settings):
    from sqlalchemy import update

    from appliance.http.auth import COOKIE_NAME
    from appliance.store.db import session_scope
    from appliance.store.tables import LoginSession, utcnow

    with TestClient(token_app, follow_redirects=False) as c:
        _, value, line = set_cookie(sign_in(c, TOKEN))
        assert f"max-age={settings.session_max_age_s}" in line
        assert c.get("/api/projects").status_code == 200
        with session_scope(settings.db_url) as s:
            s.execute(update(LoginSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert_unauthorized(c, COOKIE_NAME, value)
        # the next sign-in purges expired rows
        sign_in(c, TOKEN)
        assert len(stored_hashes(settings.db_url)) == 1


def test_changing_the_token_ends_every_session(settings):
    from appliance.http.auth import COOKIE_NAME
    from appliance.main import create_app

    settings.api_token = TOKEN
    with TestClient(create_app(settings), follow_redirects=False) as c:
        _, value, _ = set_cookie(sign_in(c, TOKEN))
        assert c.get("/api/projects").status_code == 200
    rotated = settings.model_copy(update={"api_token": "a-new-token"})
    with TestClient(create_app(rotated), follow_redirects=False) as c:
        assert_unauthorized(c, COOKIE_NAME, value)  # the row still exists; its signature no longer matches
        assert c.get("/api/projects", headers={"Authorization": "Bearer a-new-token"}).status_code == 200


def test_a_wrong_token_sets_no_cookie_and_stores_no_session(token_app, settings):
    with TestClient(token_app, follow_redirects=False) as c:
        r = c.post("/login", data={"token": TOKEN + "x", "next": "/projects"})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert stored_hashes(settings.db_url) == set()


def test_no_logout_button_without_token_mode(client):
    page = parse(client.get("/projects").text)
    assert page.select_one("header.topbar") is not None and not page.select("form#logout")
    r = client.post("/logout", follow_redirects=False)  # harmless there: back to the projects
    assert r.status_code == 303 and r.headers["location"] == "/projects"


def test_bearer_clients_get_no_logout_button_and_need_no_cookie(token_app):
    with TestClient(token_app, follow_redirects=False, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = c.get("/projects")
        assert r.status_code == 200 and not parse(r.text).select("form#logout")
        assert "set-cookie" not in r.headers


# --------------------------------------------------------------------------- in the browser
