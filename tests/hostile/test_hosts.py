"""Issue #12, item 11: Host header and DNS rebinding.

A page on `http://attacker.example:8000` whose name the attacker re-points at 127.0.0.1 reaches the
appliance as "same origin", but its requests say `Host: attacker.example:8000`. Only loopback names,
the bind address and AISTUDIO_ALLOWED_HOSTS (any port) are answered; any other Host gets the 400
envelope `HOST_NOT_ALLOWED` naming the setting, before the token check and before any handler.
Through the real Serve ingress (the session server: bound to 127.0.0.1, default hosts); the `*`
and extra-host settings, the start-up warning and the UI banner in-process.
"""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from tests.asyncrun import run_async
from tests.htmlq import parse

EVIL_HOSTS = ["attacker.example", "attacker.example:{port}", "127.0.0.1.nip.io:{port}", "localhost.attacker.example",
              "192.168.1.20:{port}", "[::2]:{port}", "evil.com:{port}@127.0.0.1"]


def refused(r, host: str | None = None):
    assert r.status_code == 400, (host, r.status_code, r.text[:200])
    if host and "@" in host and r.text.startswith("<html><body><h1>400 Bad request</h1>"):
        # Not a valid authority (userinfo in Host): HAProxy, the default ingress, refuses it itself with its
        # own page, before any app sees it. Serve's proxy passes it on and the app's envelope answers.
        return
    body = r.json()
    assert body["status"] == "error" and body["error"]["code"] == "HOST_NOT_ALLOWED", body
    assert "AISTUDIO_ALLOWED_HOSTS" in body["error"]["message"], body


# --------------------------------------------------------------------------- through Serve


@pytest.mark.ray
@pytest.mark.parametrize("host", EVIL_HOSTS)
def test_a_foreign_host_is_refused_through_serve(server, host):
    host = host.format(port=server.settings.port)
    before = server.http.get("/api/projects").json()["data"]["total"]
    # with the token (a rebinding page of a signed-in user) and without; open routes too
    for url in ("/api/projects", "/api/system/health", "/projects", "/login"):
        refused(server.http.get(url, headers={"Host": host}), host)
    refused(server.http.post("/api/projects", headers={"Host": host}, json={"name": "rebound", "task": "detection"}),
            host)
    with server.anon(follow_redirects=False) as anon:
        refused(anon.get("/api/system/health", headers={"Host": host}), host)
        refused(anon.post("/login", headers={"Host": host}, data={"token": server.token}), host)
    assert server.http.get("/api/projects").json()["data"]["total"] == before  # nothing was created


@pytest.mark.ray
@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}", "127.0.0.1"])
def test_loopback_hosts_are_answered_through_serve(server, host):
    host = host.format(port=server.settings.port)
    r = server.http.get("/api/projects", headers={"Host": host})
    assert r.status_code == 200 and r.json()["status"] == "ok", (host, r.text[:200])
    with server.anon() as anon:
        assert anon.get("/api/system/health", headers={"Host": host}).status_code == 200, host


# --------------------------------------------------------------------------- in-process settings


@pytest.mark.parametrize("header, name", [("localhost:8000", "localhost"), ("LocalHost", "localhost"),
                                          ("[::1]:8000", "::1"), ("[::1]", "::1"), ("::1", "::1"),
                                          ("127.0.0.1:80", "127.0.0.1"), ("a.example:x", "a.example:x"),
                                          ("evil.com:80@127.0.0.1", "evil.com:80@127.0.0.1")])
def test_host_name_drops_the_port_only(header, name):
    from appliance.http.hosts import host_name

    assert host_name(header) == name


def app_client(settings, **changes) -> TestClient:
    from appliance.main import create_app

    return TestClient(create_app(settings.model_copy(update=changes)), follow_redirects=False)


def test_the_bind_address_and_listed_hosts_are_answered(settings):
    with app_client(settings, host="10.1.2.3", allowed_hosts=["studio.lan", "*.corp.example"]) as c:
        for host in ("10.1.2.3:8000", "studio.lan", "Studio.LAN:443", "ai.corp.example:8000", "localhost:8000"):
            assert c.get("/api/projects", headers={"Host": host}).status_code == 200, host
        for host in ("corp.example", "evilcorp.example", "studio.lan.evil.example", "10.1.2.4:8000"):
            refused(c.get("/api/projects", headers={"Host": host}), host)


def test_star_allows_any_host(settings):
    with app_client(settings, allowed_hosts=["*"]) as c:
        for host in ("attacker.example", "10.0.0.9:8000", "whatever"):
            assert c.get("/api/projects", headers={"Host": host}).status_code == 200, host


def test_the_setting_is_read_from_the_environment(settings, monkeypatch):
    from appliance.config import Settings

    monkeypatch.setenv("AISTUDIO_ALLOWED_HOSTS", "studio.lan, *.corp.example")
    assert Settings(workspace=settings.workspace).allowed_hosts == ["studio.lan", "*.corp.example"]
    monkeypatch.setenv("AISTUDIO_ALLOWED_HOSTS", '["a.example"]')
    assert Settings(workspace=settings.workspace).allowed_hosts == ["a.example"]


def test_a_request_without_host_is_refused(settings):
    """HTTP/1.0 clients may omit Host; the app can't tell where they came from, so refuse them."""
    from appliance.main import create_app

    app = create_app(settings)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.0", "method": "GET", "scheme": "http",
             "path": "/api/system/health", "raw_path": b"/api/system/health", "query_string": b"", "headers": [],
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "root_path": ""}
    run_async(app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert b"HOST_NOT_ALLOWED" in sent[1]["body"] and b"AISTUDIO_ALLOWED_HOSTS" in sent[1]["body"]


# --------------------------------------------------------------------------- warning and banner


def banner(c: TestClient):
    return parse(c.get("/projects").text).select_one("#exposure-banner")


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_banner_when_open_to_the_network_without_a_token(settings, host):
    with app_client(settings, host=host, api_token=None) as c:
        shown = banner(c)
        assert shown is not None
        assert "without a token" in shown.text and "AISTUDIO_API_TOKEN" in shown.text


@pytest.mark.parametrize("changes", [{"host": "127.0.0.1", "api_token": None},
                                     {"host": "0.0.0.0", "api_token": "s3cret-token"}])
def test_no_banner_on_loopback_or_with_a_token(settings, changes):
    with app_client(settings, **changes) as c:
        if changes["api_token"]:
            assert c.post("/login", data={"token": "s3cret-token"}).status_code == 303
        page = c.get("/projects")
        assert page.status_code == 200 and parse(page.text).select_one("header.topbar")
        assert not parse(page.text).select("#exposure-banner")


def test_start_up_warns_when_open_to_the_network_without_a_token(settings, caplog, monkeypatch):
    """start_appliance logs the warning before it starts anything (stopped right after it here)."""
    from appliance import runtime

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(runtime, "_check_port_free", stop)  # the step after the warning
    for changes, warned in (({"host": "0.0.0.0"}, True), ({"host": "::"}, True), ({"host": "127.0.0.1"}, False),
                            ({"host": "0.0.0.0", "api_token": "t"}, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aistudio"), pytest.raises(Stop):
            runtime.start_appliance(settings.model_copy(update=changes))
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert bool([m for m in messages if "without an API token" in m and "AISTUDIO_API_TOKEN" in m]) is warned, \
            (changes, messages)


# --------------------------------------------------------------------------- Docker and Helm


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_helm_allows_the_names_its_clients_use(name):
    """The `helm test` pod calls the UI Service by its short name and the Ingress forwards its host:
    both must be in the AISTUDIO_ALLOWED_HOSTS every Ray container gets (the app then answers them)."""
    from urllib.parse import urlsplit

    from appliance.config import Settings
    from appliance.http.hosts import host_allowed, host_name
    from tests.deploy.test_docker_helm import _env_of, _kind, _one, _render_set

    docs = _render_set(name)
    service = _one(docs, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    values = {_env_of(c)["AISTUDIO_ALLOWED_HOSTS"]["value"] for p in pods for c in p["spec"]["containers"]}
    assert len(values) == 1, values  # the same everywhere
    allowed = Settings(host="0.0.0.0", allowed_hosts=values.pop()).trusted_hosts
    assert "*" not in allowed
    (test_pod,) = [p for p in _kind(docs, "Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    url = _env_of(test_pod["spec"]["containers"][0])["HEALTH_URL"]["value"]
    assert host_allowed(host_name(urlsplit(url).netloc), allowed), (url, allowed)
    for ingress in _kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            assert host_allowed(rule["host"], allowed), (rule["host"], allowed)
    assert not host_allowed("attacker.example", allowed)


def test_helm_extra_hosts_and_an_ingress_without_host():
    from appliance.config import Settings
    from tests.deploy.test_docker_helm import _env_of, _one, _render

    def allowed(*extra):
        head = _one(_render(*extra), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        return Settings(allowed_hosts=_env_of(head["spec"]["containers"][0])["AISTUDIO_ALLOWED_HOSTS"]["value"]).trusted_hosts

    assert "lb.example.com" in allowed("--set", "config.allowedHosts[0]=lb.example.com")
    assert "*" in allowed("--set", "ingress.enabled=true")  # an Ingress for any host name: the app can't list them


def test_docker_health_check_calls_a_default_host():
    import re

    from appliance.config import Settings
    from appliance.http.hosts import host_allowed
    from tests.deploy.test_docker_helm import DOCKERFILE

    text = DOCKERFILE.read_text()
    check = text[text.index("HEALTHCHECK"):]
    (host,) = set(re.findall(r"http://([^:/'\"]+)", check))
    assert host_allowed(host, Settings(host="0.0.0.0").trusted_hosts), host
