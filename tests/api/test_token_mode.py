"""Token mode through the real Serve ingress: the session server runs with an API token.

Every route of the app — read from the route table of `create_app`, so a route added later is
walked too — is requested with real ids of real objects (a project with images and a split, an
experiment trained and stopped through the live SSE stream, an evaluation, an export, imports):
without the token each answers the 401 envelope (API, HTMX) or the login redirect (pages) and
changes nothing; with it each answers what it answers for a signed-in user. Also: the login
cookie, a wrong token, the open paths, the files / stream / upload / docs routes, and `next`
values that try to leave the site after signing in.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest
from PIL import Image

from tests.fixtures import class_image, create_project, list_all_images, make_classification_folder, wait_import
from tests.htmlq import parse
from tests.workflows import TERMINAL, create_experiment, import_folder, wait_experiment, wait_for

pytestmark = pytest.mark.ray

# What a user of the app may reach without signing in (written here, not read from the app).
OPEN = {("GET", "/api/system/health"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"),
        ("GET", "/static/{static_file}"), ("GET", "/favicon.ico")}

# The status each route answers a signed-in user for the request the walk sends it.
EXPECTED = {
    ("GET", "/openapi.json"): 200, ("GET", "/docs"): 200, ("GET", "/favicon.ico"): 200,
    ("GET", "/static/{static_file}"): 200,
    # Pretrained weights (issue 13 item 8): the walk asks for a model the catalog lacks (no download starts).
    ("GET", "/api/weights"): 200, ("POST", "/api/weights"): 422,
    ("GET", "/api/projects"): 200, ("POST", "/api/projects"): 201, ("GET", "/api/projects/{project_id}"): 200,
    ("PATCH", "/api/projects/{project_id}"): 200, ("DELETE", "/api/projects/{project_id}"): 200,
    ("POST", "/api/datasets/import/local"): 202, ("POST", "/api/datasets/import/upload"): 202,
    ("GET", "/api/datasets/{project_id}/imports/{import_id}"): 200,
    ("DELETE", "/api/datasets/{project_id}/imports/{import_id}"): 409,  # a finished import can't be cancelled
    ("GET", "/api/datasets/{project_id}"): 200, ("GET", "/api/datasets/{project_id}/images"): 200,
    ("GET", "/api/datasets/{project_id}/images/{image_id}"): 200,
    ("DELETE", "/api/datasets/{project_id}/images/{image_id}"): 200,
    ("GET", "/api/datasets/{project_id}/image/{filename}"): 200,
    ("GET", "/api/datasets/{project_id}/thumbnail/{filename}"): 200,
    ("GET", "/api/splits/{project_id}"): 200, ("POST", "/api/splits/{project_id}"): 201,
    ("GET", "/api/splits/{project_id}/{split_id}"): 200, ("DELETE", "/api/splits/{project_id}/{split_id}"): 200,
    ("GET", "/api/training/models"): 200, ("GET", "/api/training/{project_id}/experiments"): 200,
    ("POST", "/api/training/{project_id}/experiments"): 201,
    ("GET", "/api/training/{project_id}/experiments/{experiment_id}"): 200,
    ("DELETE", "/api/training/{project_id}/experiments/{experiment_id}"): 200,
    ("POST", "/api/training/run"): 202, ("POST", "/api/training/{project_id}/experiments/{experiment_id}/stop"): 200,
    ("GET", "/api/training/{project_id}/experiments/{experiment_id}/logs"): 200,
    ("GET", "/api/training/{project_id}/experiments/{experiment_id}/stream"): 200,
    ("GET", "/api/evaluation/{project_id}"): 200, ("POST", "/api/evaluation/run"): 202,
    ("POST", "/api/evaluation/{project_id}/predict"): 200, ("GET", "/api/evaluation/{project_id}/{evaluation_id}"): 200,
    ("GET", "/api/evaluation/{project_id}/{evaluation_id}/samples"): 200,
    ("DELETE", "/api/evaluation/{project_id}/{evaluation_id}"): 200,
    ("GET", "/api/export/{project_id}"): 200, ("POST", "/api/export/run"): 202,
    ("GET", "/api/export/{project_id}/{export_id}"): 200, ("GET", "/api/export/{project_id}/{export_id}/download"): 200,
    ("DELETE", "/api/export/{project_id}/{export_id}"): 200,
    ("GET", "/api/deployments"): 200, ("POST", "/api/deployments"): 202,
    ("GET", "/api/deployments/{deployment_id}"): 200, ("DELETE", "/api/deployments/{deployment_id}"): 200,
    ("GET", "/api/system/health"): 200, ("GET", "/api/system/gpu"): 200, ("GET", "/api/system/workspace"): 200,
    ("GET", "/api/system/jobs"): 200,
    # Dataset health (issue 13 item 7)
    ("GET", "/api/datasets/{project_id}/near-duplicates"): 200, ("GET", "/api/splits/{project_id}/{split_id}/leaks"): 200,
    ("GET", "/projects/{project_id}/dataset/near-duplicates"): 200,
    ("GET", "/"): 307, ("GET", "/projects"): 200, ("GET", "/projects/{project_id}/{section}"): 200,
    ("GET", "/login"): 200, ("POST", "/login"): 303, ("POST", "/logout"): 303,
}
# Routes that start work: the world below sends them (with the token) and waits for the work.
STARTS_JOBS = {("POST", "/api/datasets/import/local"), ("POST", "/api/datasets/import/upload"),
               ("POST", "/api/training/run"), ("POST", "/api/training/{project_id}/experiments/{experiment_id}/stop"),
               ("POST", "/api/evaluation/run"), ("POST", "/api/export/run"), ("POST", "/api/deployments")}
EPOCHS = 5
HOSTILE_NEXT = ["/\\evil.com", "//evil.com", "https:evil.com", "/%5Cevil.com", "\\\\evil.com", "http://evil.com",
                "/\t/evil.com", "///evil.com", "/%2F/evil.com", "https://evil.com/projects", "javascript:alert(1)"]


def route_table(settings) -> list[tuple[str, str]]:
    """(method, path template) of every route of the app; a mount serves files under `{static_file}`."""
    from fastapi.routing import iter_route_contexts

    from appliance.main import create_app

    routes = []
    for route in iter_route_contexts(create_app(settings).routes):
        if route.methods is None:  # a Mount (static files)
            routes.append(("GET", f"{route.path}/{{static_file}}"))
            continue
        routes += [(method, route.path) for method in sorted(route.methods) if method != "HEAD"]
    return routes


def fill(path: str, ids: dict) -> str:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    missing = [n for n in names if n not in ids]
    assert not missing, f"{path}: no real object for {missing}; add one to the world of this test"
    return path.format(**ids)


def one_image_zip(seed: int) -> bytes:
    """A folder-layout ZIP of one new image (class red)."""
    import random

    buf = io.BytesIO()
    im = class_image((220, 30, 30), 32, random.Random(f"walk-{seed}"))
    img = io.BytesIO()
    im.save(img, format="PNG")
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"walk/red/new-{seed}.png", img.getvalue())
    return buf.getvalue()


@dataclass
class World:
    pid: str
    sid: str
    eid: str  # trained, then stopped through the live stream
    source: object  # the imported folder
    ids: dict
    responses: dict = field(default_factory=dict)  # (method, path) → (status, body) of the job routes
    live_events: list = field(default_factory=list)
    jobs_while_running: list = field(default_factory=list)
    experiment_while_running: dict = field(default_factory=dict)


def sse_events(lines):
    """(event, data, id) of an SSE line iterator, one at a time."""
    current = {}
    for line in lines:
        if not line:
            if "event" in current:
                yield current["event"], json.loads(current.get("data", "null")), current.get("id")
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    """Real objects of every kind, made with the token; the job routes are sent here and their
    work waited for."""
    http = server.http
    source = make_classification_folder(server.import_root / f"walk-{uuid.uuid4().hex[:8]}", per_class=6).root
    pid = create_project(http, name="token walk")
    import_folder(http, pid, source)
    r = http.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.6, "val": 0.2, "test": 0.2, "seed": 1})
    assert r.status_code == 201, r.text
    sid = r.json()["data"]["id"]
    responses = {}

    # Training: run, watch the live stream, read the jobs list while it trains, stop it.
    eid = create_experiment(http, pid, sid, epochs=EPOCHS, name="walk")
    r = http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid})
    assert r.status_code == 202, r.text
    responses[("POST", "/api/training/run")] = (r.status_code, r.json())
    events, jobs, running = [], [], {}
    stop_path = "/api/training/{project_id}/experiments/{experiment_id}/stop"
    with http.stream("GET", f"/api/training/{pid}/experiments/{eid}/stream", timeout=300) as stream:
        assert stream.status_code == 200, stream.read()
        assert stream.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(stream.iter_lines()):
            events.append(event)
            if event[0] == "epoch_end" and stop_path not in {p for _, p in responses}:
                jobs = http.get("/api/system/jobs").json()["data"]
                running = http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
                r = http.post(f"/api/training/{pid}/experiments/{eid}/stop")
                responses[("POST", stop_path)] = (r.status_code, r.json())
            if event[0] == "complete":
                break
    assert wait_experiment(http, pid, eid)["status"] in TERMINAL

    # Evaluation and export of the stopped run.
    r = http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": "test"})
    assert r.status_code == 202, r.text
    responses[("POST", "/api/evaluation/run")] = (r.status_code, r.json())
    evid = r.json()["data"]["id"]
    r = http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "torchscript"})
    assert r.status_code == 202, r.text
    responses[("POST", "/api/export/run")] = (r.status_code, r.json())
    xid = r.json()["data"]["id"]
    for kind, job in (("evaluation", evid), ("export", xid)):
        wait_for(lambda: http.get(f"/api/{kind}/{pid}/{job}").json()["data"]["status"],
                 lambda s: s in ("completed", "failed"), timeout=600, every=0.5)

    # A live endpoint of the (TorchScript) export: deployments are read routes too.
    r = http.post("/api/deployments", json={"project_id": pid, "export_id": xid, "name": f"walk-{uuid.uuid4().hex[:6]}",
                                            "auth": "none"})
    assert r.status_code == 202, r.text
    responses[("POST", "/api/deployments")] = (r.status_code, r.json())
    deployment_id = r.json()["data"]["id"]
    wait_for(lambda: http.get(f"/api/deployments/{deployment_id}").json()["data"]["status"],
             lambda s: s in ("running", "failed"), timeout=300, every=0.5)

    # Imports: the same folder again (all duplicates) and a ZIP upload of one new image.
    r = http.post("/api/datasets/import/local", json={"project_id": pid, "source_path": str(source)})
    responses[("POST", "/api/datasets/import/local")] = (r.status_code, r.json())
    import_id = r.json()["data"]["id"]
    wait_import(http, pid, import_id, timeout=120)
    r = http.post("/api/datasets/import/upload", data={"project_id": pid},
                  files={"file": ("one.zip", one_image_zip(0), "application/zip")})
    responses[("POST", "/api/datasets/import/upload")] = (r.status_code, r.json())
    upload = wait_import(http, pid, r.json()["data"]["id"], timeout=120)
    new_image = next(im for im in list_all_images(http, pid) if im["original_name"] == "red/new-0.png")

    image = next(im for im in list_all_images(http, pid) if im["id"] != new_image["id"])
    ids = {"project_id": pid, "import_id": import_id, "image_id": image["id"], "filename": image["filename"],
           "split_id": sid, "experiment_id": eid, "evaluation_id": evid, "export_id": xid, "section": "dataset",
           "static_file": "app.css", "upload_job": upload["id"], "new_image_id": new_image["id"],
           "deployment_id": deployment_id}
    yield World(pid=pid, sid=sid, eid=eid, source=source, ids=ids, responses=responses, live_events=events,
                 jobs_while_running=jobs, experiment_while_running=running)
    http.delete(f"/api/deployments/{deployment_id}")  # no endpoint outlives the module


def request_kwargs(method: str, path: str, world: World, token: str) -> dict:
    """The request a user would send to this route (valid bodies: only the token is missing)."""
    ids = world.ids
    json_bodies = {
        ("POST", "/api/projects"): {"name": f"walk-{uuid.uuid4().hex[:6]}", "task": "classification"},
        ("PATCH", "/api/projects/{project_id}"): {"description": "walked"},
        ("POST", "/api/datasets/import/local"): {"project_id": world.pid, "source_path": str(world.source)},
        ("POST", "/api/splits/{project_id}"): {"name": "walk", "train": 0.6, "val": 0.2, "test": 0.2, "seed": 3},
        ("POST", "/api/training/{project_id}/experiments"): {
            "name": "walk-b", "split_id": world.sid, "model": "resnet18", "epochs": 1, "batch_size": 4,
            "image_size": 32, "scheduler": "none"},
        ("POST", "/api/training/run"): {"project_id": world.pid, "experiment_id": world.eid},
        ("POST", "/api/evaluation/run"): {"project_id": world.pid, "experiment_id": world.eid, "subset": "test"},
        ("POST", "/api/export/run"): {"project_id": world.pid, "experiment_id": world.eid, "format": "torchscript"},
        ("POST", "/api/deployments"): {"project_id": world.pid, "export_id": ids["export_id"], "name": "walk-refused"},
        ("POST", "/api/weights"): {"models": ["not-a-catalog-model"]},
    }
    if (method, path) in json_bodies:
        return {"json": json_bodies[(method, path)]}
    if (method, path) == ("POST", "/api/datasets/import/upload"):
        return {"data": {"project_id": world.pid}, "files": {"file": ("one.zip", one_image_zip(1), "application/zip")}}
    if (method, path) == ("POST", "/api/evaluation/{project_id}/predict"):
        return {"data": {"experiment_id": world.eid, "image_id": ids["image_id"]}}
    if (method, path) == ("POST", "/login"):
        return {"data": {"token": token, "next": "/projects"}}
    return {}


def state(http, world: World) -> dict:
    """What a refused request must not change."""
    pid = world.pid
    return {
        "projects": http.get("/api/projects?limit=500").json()["data"],
        "project": http.get(f"/api/projects/{pid}").json()["data"],
        "images": [im["id"] for im in list_all_images(http, pid)],
        "splits": http.get(f"/api/splits/{pid}").json()["data"],
        "experiments": http.get(f"/api/training/{pid}/experiments").json()["data"],
        "evaluations": http.get(f"/api/evaluation/{pid}").json()["data"],
        "exports": http.get(f"/api/export/{pid}").json()["data"],
        "deployments": [(d["id"], d["status"]) for d in http.get(f"/api/deployments?project_id={pid}").json()["data"]],
        "last_import": http.get(f"/api/datasets/{pid}").json()["data"]["last_import"],
        "jobs": http.get("/api/system/jobs").json()["data"],
    }


def assert_refused(r, method: str, path: str, url: str):
    where = (method, url, r.status_code, r.text[:200])
    if path.startswith("/api/"):
        assert r.status_code == 401, where
        assert r.headers["content-type"].startswith("application/json"), where
        body = r.json()
        assert body["status"] == "error" and body["error"]["code"] == "UNAUTHORIZED", where
        assert "data" not in body or body["data"] is None, where
    else:
        assert r.status_code == 303, where
        assert r.headers["location"] == f"/login?next={quote(url)}", where


# ----------------------------------------------------------------------------- the walks


def test_the_walk_covers_every_route_of_the_app(server, world):
    routes = route_table(server.settings)
    assert len(routes) == len(set(routes))
    # a new route fails here until the walk knows what it answers (the 401 walks cover it anyway)
    assert set(routes) == set(EXPECTED), set(routes) ^ set(EXPECTED)
    for method, path in routes:
        fill(path, world.ids)


def test_without_the_token_every_route_is_refused_and_nothing_changes(server, world):
    before = state(server.http, world)
    with server.anon(follow_redirects=False) as anon:
        for method, path in route_table(server.settings):
            url = fill(path, world.ids)
            r = anon.request(method, url, **request_kwargs(method, path, world, token="not-the-token"))
            if (method, path) in OPEN:
                expected = 303 if path == "/logout" else {"GET": 200, "POST": 401}[method]  # logout: to /login
                assert r.status_code == expected, (method, url, r.status_code)
                if path == "/login" and method == "POST":  # the form's own answer to a wrong token: the page again
                    assert r.headers["content-type"].startswith("text/html") and "set-cookie" not in r.headers
                continue
            assert_refused(r, method, path, url)
    assert state(server.http, world) == before


def test_htmx_requests_without_the_token_get_the_401_envelope(server, world):
    with server.anon(follow_redirects=False, headers={"HX-Request": "true"}) as anon:
        for method, path in route_table(server.settings):
            if (method, path) in OPEN:
                continue
            url = fill(path, world.ids)
            r = anon.request(method, url, **request_kwargs(method, path, world, token="x"))
            assert r.status_code == 401, (method, url, r.status_code)
            assert r.json()["error"]["code"] == "UNAUTHORIZED", (method, url)


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Bearer", "Basic dG9rZW4=", "bearer-{token}",
                                    "Bearer {token}x", "Bearer {token_prefix}"])
def test_a_wrong_token_is_refused(server, world, header):
    header = header.format(token=server.token, token_prefix=server.token[:-1])
    with server.anon(follow_redirects=False, headers={"Authorization": header}) as anon:
        for method, path in route_table(server.settings):
            if method != "GET" or (method, path) in OPEN:
                continue
            url = fill(path, world.ids)
            assert_refused(anon.get(url), method, path, url)


def test_a_wrong_cookie_is_refused(server, world):
    for name, value in (("aistudio_session", server.token + "x"), ("aistudio_session", server.token),
                        ("aistudio_token", server.token)):  # the cookie never holds the token (tests/hostile/test_login.py)
        with server.anon(follow_redirects=False, cookies={name: value}) as anon:
            r = anon.get("/api/projects")
            assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


def test_the_login_cookie_authenticates_every_read_route(server, world):
    with server.anon(follow_redirects=False) as anon:
        r = anon.post("/login", data={"token": server.token, "next": "/projects"})
        assert r.status_code == 303 and r.headers["location"] == "/projects"
        cookie = r.headers["set-cookie"].lower()
        assert "aistudio_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert anon.cookies.get("aistudio_session") and server.token not in cookie  # a signed session id
        for method, path in route_table(server.settings):
            if method != "GET":
                continue
            url = fill(path, world.ids)
            r = anon.get(url)
            assert r.status_code == EXPECTED[(method, path)], (url, r.status_code, r.text[:200])


def test_open_paths_stay_open(server, world):
    import appliance

    with server.anon(follow_redirects=False) as anon:
        r = anon.get("/api/system/health")
        assert r.status_code == 200 and r.json()["data"]["version"] == appliance.__version__
        strip = anon.get("/api/system/health", headers={"HX-Request": "true"})  # the pages' status strip
        assert strip.status_code == 200 and len(parse(strip.text).select("span.dot")) == 3
        r = anon.get("/static/app.css")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
        assert r.content == (server_package_dir() / "static" / "app.css").read_bytes()
        r = anon.get("/login")
        form = parse(r.text).select_one("form")
        assert r.status_code == 200 and form.attrs["action"] == "/login" and form.attrs["method"] == "post"
        # a page asked for without the token comes back to the login form, which returns there
        r = anon.get(f"/projects/{world.pid}/export")
        assert r.status_code == 303
        login = anon.get(r.headers["location"])
        assert parse(login.text).select_one("input[name=next]").attrs["value"] == f"/projects/{world.pid}/export"
        r = anon.post("/login", data={"token": server.token, "next": f"/projects/{world.pid}/export"})
        assert r.status_code == 303 and r.headers["location"] == f"/projects/{world.pid}/export"
        assert anon.get(r.headers["location"]).status_code == 200


def server_package_dir():
    import appliance

    from pathlib import Path

    return Path(appliance.__file__).parent


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_login_never_redirects_off_site(server, target):
    with server.anon(follow_redirects=False) as anon:
        r = anon.post("/login", data={"token": server.token, "next": target})
        assert r.status_code == 303
        location = r.headers["location"]
        resolved = urlsplit(urljoin(server.url + "/login", location))
        # where a browser goes: this server (backslashes count as slashes there, tabs are dropped)
        browser_view = urlsplit(urljoin(server.url + "/login", location.replace("\\", "/").replace("\t", "")))
        assert (resolved.scheme, resolved.netloc) == ("http", urlsplit(server.url).netloc), location
        assert (browser_view.scheme, browser_view.netloc) == ("http", urlsplit(server.url).netloc), location
        assert location == "/projects", location
        # the form itself never carries the hostile value forward
        page = anon.get("/login", params={"next": target})
        assert parse(page.text).select_one("input[name=next]").attrs["value"] == "/projects"


@pytest.mark.parametrize("target", ["/projects", "/projects?sort=name", "/api/system/jobs", "/projects/%20x"])
def test_login_returns_to_a_path_of_this_site(server, target):
    with server.anon(follow_redirects=False) as anon:
        r = anon.post("/login", data={"token": server.token, "next": target})
        assert r.status_code == 303 and r.headers["location"] == target


# ----------------------------------------------------------------------------- explicit routes


def test_image_and_thumbnail_files(server, world):
    pid, name = world.pid, world.ids["filename"]
    stored = server.settings.workspace / "projects" / pid / "dataset" / "images" / name
    r = server.http.get(f"/api/datasets/{pid}/image/{name}")
    assert r.status_code == 200 and r.content == stored.read_bytes()
    r = server.http.get(f"/api/datasets/{pid}/thumbnail/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and thumb.size == Image.open(stored).size  # 32 px: under the thumbnail size
    with server.anon() as anon:
        for kind in ("image", "thumbnail"):
            r = anon.get(f"/api/datasets/{pid}/{kind}/{name}")
            assert r.status_code == 401 and not r.content.startswith(b"\xff\xd8")


def test_download_of_an_export(server, world):
    pid, xid = world.pid, world.ids["export_id"]
    export = server.http.get(f"/api/export/{pid}/{xid}").json()["data"]
    assert export["status"] == "completed", export
    r = server.http.get(f"/api/export/{pid}/{xid}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert json.loads(zf.read("labels.json")) == ["blue", "red"]  # the generated classes, sorted
        assert "predict.py" in zf.namelist()
    with server.anon() as anon:
        r = anon.get(f"/api/export/{pid}/{xid}/download")
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")


def test_live_stream_with_the_token_and_its_history_after(server, world):
    kinds = [e[0] for e in world.live_events]
    assert kinds[0] == "status" and kinds[-1] == "complete"
    epochs = [e[1]["epoch"] for e in world.live_events if e[0] == "epoch_end"]
    assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) < EPOCHS
    final = server.http.get(f"/api/training/{world.pid}/experiments/{world.eid}").json()["data"]
    assert world.live_events[-1][1]["status"] == final["status"] == "stopped"
    assert final["epochs_done"] == len(epochs)
    # the finished run's stream: its history, then complete
    with server.http.stream("GET", f"/api/training/{world.pid}/experiments/{world.eid}/stream") as stream:
        assert stream.status_code == 200
        replay = list(sse_events(stream.iter_lines()))
    assert [e[0] for e in replay] == ["status"] + ["epoch_end"] * len(epochs) + ["complete"]
    with server.anon() as anon:
        with anon.stream("GET", f"/api/training/{world.pid}/experiments/{world.eid}/stream") as stream:
            assert stream.status_code == 401 and not stream.headers["content-type"].startswith("text/event-stream")


def test_the_jobs_list_shows_the_running_experiment(server, world):
    assert world.responses[("POST", "/api/training/run")][0] == 202
    mine = [j for j in world.jobs_while_running if j["id"] == world.eid]
    assert len(mine) == 1, world.jobs_while_running
    job = mine[0]
    assert set(job) == {"kind", "id", "project_id", "status", "done", "total", "created_at"}
    assert (job["kind"], job["project_id"], job["status"], job["total"]) == ("training", world.pid, "running", EPOCHS)
    assert job["created_at"] == world.experiment_while_running["created_at"]
    # read after the first epoch_end event; epochs reach the database before the event bus
    assert 1 <= job["done"] <= world.experiment_while_running["epochs_done"]
    assert server.http.get("/api/system/jobs").json()["data"] == []  # all of it finished since


def test_upload_through_the_token(server, world):
    status, body = world.responses[("POST", "/api/datasets/import/upload")]
    assert status == 202 and body["data"]["status"] == "queued"
    job = server.http.get(f"/api/datasets/{world.pid}/imports/{world.ids['upload_job']}").json()["data"]
    assert (job["status"], job["added"], job["duplicates"]) == ("completed", 1, 0)
    with server.anon() as anon:
        r = anon.post("/api/datasets/import/upload", data={"project_id": world.pid},
                      files={"file": ("one.zip", one_image_zip(2), "application/zip")})
        assert r.status_code == 401
    assert "red/new-2.png" not in {im["original_name"] for im in list_all_images(server.http, world.pid)}


def test_docs_and_openapi(server):
    r = server.http.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text
    schema = server.http.get("/openapi.json").json()
    assert schema["info"]["version"] == installed_version()
    assert "/api/projects" in schema["paths"]
    with server.anon(follow_redirects=False) as anon:
        for url in ("/docs", "/redoc", "/openapi.json"):
            r = anon.get(url)
            assert r.status_code == 303 and r.headers["location"] == f"/login?next={quote(url)}"


def installed_version() -> str:
    from importlib.metadata import version

    return version("aistudio")


def delete_target(path: str, world: World, created: dict) -> dict:
    """Ids for a DELETE: the objects the walk created for it (or the world's, for the last routes)."""
    ids = dict(world.ids)
    if path == "/api/projects/{project_id}":
        ids["project_id"] = created["project"]
    elif path == "/api/splits/{project_id}/{split_id}":
        ids["split_id"] = created["split"]
    elif path == "/api/training/{project_id}/experiments/{experiment_id}":
        ids["experiment_id"] = created["experiment"]
    elif path == "/api/datasets/{project_id}/images/{image_id}":
        ids["image_id"] = world.ids["new_image_id"]
    return ids


CREATES = {"/api/projects": "project", "/api/splits/{project_id}": "split",
           "/api/training/{project_id}/experiments": "experiment"}


def test_with_the_token_every_route_answers(server, world):
    """Last in this module: it deletes what the walk created, and the world's evaluation and export."""
    routes = route_table(server.settings)
    answered, created = {}, {}
    with httpx.Client(base_url=server.url, timeout=120, follow_redirects=False,
                      headers={"Authorization": f"Bearer {server.token}"}) as http:
        # deletes last; the endpoint first of them (its export can't be deleted while it serves it)
        for method, path in sorted(routes, key=lambda route: (route[0] == "DELETE",
                                                              route[1] != "/api/deployments/{deployment_id}")):
            if (method, path) in STARTS_JOBS:  # sent by the world, which waited for their work
                answered[(method, path)] = world.responses[(method, path)][0]
                continue
            ids = delete_target(path, world, created) if method == "DELETE" else world.ids
            url = fill(path, ids)
            r = http.request(method, url, **request_kwargs(method, path, world, server.token))
            answered[(method, path)] = r.status_code
            if method == "POST" and path in CREATES and r.status_code == 201:
                created[CREATES[path]] = r.json()["data"]["id"]
    assert set(answered) == set(routes)
    wrong = {route: (status, EXPECTED.get(route)) for route, status in answered.items()
             if status != EXPECTED.get(route)}
    assert not wrong, wrong
    pid = world.pid
    for url in (f"/api/projects/{created['project']}", f"/api/splits/{pid}/{created['split']}",
                f"/api/training/{pid}/experiments/{created['experiment']}",
                f"/api/evaluation/{pid}/{world.ids['evaluation_id']}", f"/api/export/{pid}/{world.ids['export_id']}",
                f"/api/datasets/{pid}/images/{world.ids['new_image_id']}",
                f"/api/deployments/{world.ids['deployment_id']}"):
        assert server.http.get(url).status_code == 404, url
