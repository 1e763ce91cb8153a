"""Issue #12, item 1: request bodies are limited while they stream, before anything reads them whole.

Through the real Serve ingress (the session `server`, whose uploads are limited to 64 MiB), with
raw sockets (`rawhttp.exchange`): a body the server must refuse is sent in two parts, the second
held back until the answer has arrived (or 60 s passed). "Answered early" therefore means the
server answered while the client still had bytes to send — it did not read the body to the end —
on any machine speed. The replica's open files are read from /proc: no spooled temp file, and an
upload is written to its staging file and nowhere else.

The guard's corner cases that need no network (a false Content-Length, the app's own answer to a
cut-off body replaced by the 413) are tested in-process on the middleware itself.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from appliance.config import Settings
from tests.asyncrun import run_async
from tests.fixtures import create_project, make_classification_folder, wait_import, zip_dir
from tests.hostile.rawhttp import exchange, multipart, pieces, request_head
from tests.workflows import wait_for

MiB = 1024 * 1024
JSON_LIMIT = 1 * MiB  # the default AISTUDIO_MAX_JSON_BODY_BYTES
LOGIN_MAX_BYTES = 16 * 1024
REPLICA_CLASS = "ServeReplica:aistudio:AIStudioIngress"


# ----------------------------------------------------------------------------- the replica's files

def _parent(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2:].split()[1])


def _descends_from_us(pid: int) -> bool:
    """This test process started the session's Ray (ray.init), so its replica is a descendant;
    other sessions' replicas on the machine are not."""
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = _parent(pid)
    return False


def replica_pid() -> int:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if REPLICA_CLASS.encode() in cmdline and _descends_from_us(int(entry)):
                found.append(int(entry))
        except (OSError, ValueError):
            continue
    assert len(found) == 1, found
    return found[0]


def open_files(pid: int) -> list[str]:
    """Targets of the process's file descriptors that are files (sockets, pipes and the like left out)."""
    found = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("/"):
            found.append(target)
    return found


def temp_files(pid: int) -> list[str]:
    """Files the replica holds directly in the temp dir: where Starlette spools a form's file parts
    (an unlinked `/tmp/#N (deleted)`). Ray's session folder and test workspaces are in sub-folders."""
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    return [f for f in open_files(pid) if f.startswith(tmp) and "/" not in f[len(tmp):]]


def staging(server) -> set[str]:
    return {p.name for p in (server.settings.workspace / "staging").iterdir()}


def auth(server, **extra) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}", **extra}


def refused(result, status: int, code: str) -> str:
    """The envelope's message, after checking the answer came while the client still had bytes to send."""
    assert result.status == status, (result.status, result.body[:300], result.send_error)
    assert result.answered_early, f"answered only after the whole body was sent ({result.sent_before_answer} bytes)"
    body = result.json()
    assert body["status"] == "error" and body["error"]["code"] == code, body
    assert "/" + "tmp" not in body["error"]["message"]
    return body["error"]["message"]


def after_refusal(server, path: str, headers: dict[str, str], body: bytes, split: int, how: str) -> str | int:
    """Send `body[:split]`, wait for the early refusal, send the rest anyway, then `GET /api/system/health` on
    the same connection: "closed" if the server ended the connection, else that request's status."""
    from tests.hostile.rawhttp import _complete

    parts = urlsplit(server.url)
    frame = (lambda d: d) if how == "declared" else (lambda d: f"{len(d):x}\r\n".encode() + d + b"\r\n")
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request_head("POST", path, parts.netloc, auth(server, **headers),
                                  len(body) if how == "declared" else None) + frame(body[:split]))

        def answer() -> tuple | None:
            buf = b""
            while (done := _complete(buf)) is None:
                data = sock.recv(1 << 16)
                if not data:
                    return None
                buf += data
            return done

        assert answer()[0] == 413
        try:
            sock.sendall(frame(body[split:]) + (b"" if how == "declared" else b"0\r\n\r\n"))
            sock.sendall(request_head("GET", "/api/system/health", parts.netloc, auth(server), 0))
            followed = answer()
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        return "closed" if followed is None else followed[0]


# ----------------------------------------------------------------------------- login

@pytest.mark.parametrize("how", ["chunked", "declared"])
def test_login_refuses_a_multipart_body_without_reading_it(server, how):
    """A multipart login (any number of file parts of any size) is refused before the body is read:
    nothing is spooled to the temp dir."""
    pid = replica_pid()
    head, tail = multipart("b0und", {"token": "nope"}, "blob", "blob.bin", "application/octet-stream")
    size = 8 * MiB
    first = [head, *pieces(2 * MiB)] if how == "chunked" else []
    rest = [*pieces(size - 2 * MiB), tail] if how == "chunked" else [head, *pieces(size), tail]
    length = None if how == "chunked" else len(head) + size + len(tail)
    before = temp_files(pid)
    result = exchange(server.url, "POST", "/login", {"Content-Type": "multipart/form-data; boundary=b0und"},
                      first, rest, length=length)
    message = refused(result, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/x-www-form-urlencoded" in message
    assert temp_files(pid) == before == []


@pytest.mark.parametrize("how", ["chunked", "declared"])
def test_login_over_16_kib_is_413(server, how):
    form = b"token=" + b"a" * LOGIN_MAX_BYTES + b"&next=/projects"
    split = LOGIN_MAX_BYTES + 1
    first = [form[:split]] if how == "chunked" else []
    rest = [form[split:]] if how == "chunked" else [form]
    result = exchange(server.url, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                      first, rest, length=None if how == "chunked" else len(form))
    assert str(LOGIN_MAX_BYTES) in refused(result, 413, "PAYLOAD_TOO_LARGE")
    # a login of a normal size still works
    with server.anon(follow_redirects=False) as anon:
        r = anon.post("/login", data={"token": server.token, "next": "/projects"})
        assert r.status_code == 303, r.text


# ----------------------------------------------------------------------------- JSON and the other routes

@pytest.mark.parametrize("how", ["chunked", "declared"])
def test_json_body_over_the_limit_is_413(server, how):
    body = json.dumps({"name": "x" * (2 * JSON_LIMIT), "task": "classification"}).encode()
    split = JSON_LIMIT + 1
    first = [body[:split]] if how == "chunked" else []
    rest = [body[split:]] if how == "chunked" else [body]
    result = exchange(server.url, "POST", "/api/projects", auth(server, **{"Content-Type": "application/json"}),
                      first, rest, length=None if how == "chunked" else len(body))
    message = refused(result, 413, "PAYLOAD_TOO_LARGE")
    assert str(JSON_LIMIT) in message and "AISTUDIO_MAX_JSON_BODY_BYTES" in message
    # The app never reads the rest of the body: it answers `Connection: close` and closes its connection.
    # Behind HAProxy (the default ingress) the client's connection is HAProxy's: it may stay open, and then
    # the rest of the body must be drained as body (never parsed as a request): a request sent after it on
    # the same connection gets its own answer.
    if result.headers.get("connection") != "close" and not result.closed_after_answer:
        assert after_refusal(server, "/api/projects", {"Content-Type": "application/json"}, body, split, how) \
            in ("closed", 200)
    if how == "chunked":
        assert result.sent_before_answer < len(body)
    # a body of a normal size on the same route
    assert server.http.post("/api/projects", json={"name": "fine", "task": "classification"}).status_code == 201


def test_predict_image_over_its_limit_is_413_unread(server):
    """The "try one image" route has its own limit (AISTUDIO_MAX_PREDICT_IMAGE_BYTES, 32 MiB)."""
    size = 40 * MiB
    head, tail = multipart("b0und", {"experiment_id": "exp-0"}, "file", "big.jpg", "image/jpeg")
    result = exchange(server.url, "POST", "/api/evaluation/proj-000000000000/predict",
                      auth(server, **{"Content-Type": "multipart/form-data; boundary=b0und"}),
                      [], [head, *pieces(size), tail], length=len(head) + size + len(tail))
    assert "AISTUDIO_MAX_PREDICT_IMAGE_BYTES" in refused(result, 413, "PAYLOAD_TOO_LARGE")


# ----------------------------------------------------------------------------- the ZIP upload

@pytest.mark.parametrize("how", ["chunked", "declared"])
def test_upload_over_the_limit_is_413_while_streaming_and_leaves_nothing(server, how):
    limit = server.settings.max_upload_bytes
    pid = create_project(server.http, name="too big")
    replica = replica_pid()
    before = staging(server)
    head, tail = multipart("b0und", {"project_id": pid, "format": "auto"}, "file", "huge.zip")
    over = limit + 2 * MiB
    if how == "chunked":
        first, rest, length = [head, *pieces(limit + MiB)], [*pieces(over - limit - MiB), tail], None
    else:
        first, rest, length = [], [head, *pieces(over), tail], len(head) + over + len(tail)
    result = exchange(server.url, "POST", "/api/datasets/import/upload",
                      auth(server, **{"Content-Type": "multipart/form-data; boundary=b0und"}), first, rest, length=length)
    message = refused(result, 413, "PAYLOAD_TOO_LARGE")
    assert str(limit) in message and "AISTUDIO_MAX_UPLOAD_BYTES" in message
    # nothing of it is left: no staging folder, no temp file, nothing open
    wait_for(lambda: staging(server), lambda left: left == before, timeout=30)
    assert temp_files(replica) == []
    assert not [f for f in open_files(replica) if "/staging/" in f]
    assert server.http.get(f"/api/datasets/{pid}").json()["data"]["image_count"] == 0


def test_upload_to_an_unknown_project_is_refused_before_the_archive_arrives(server):
    before = staging(server)
    head, tail = multipart("b0und", {"project_id": "proj-000000000000"}, "file", "orphan.zip")
    result = exchange(server.url, "POST", "/api/datasets/import/upload",
                      auth(server, **{"Content-Type": "multipart/form-data; boundary=b0und"}),
                      [head, *pieces(2 * MiB)], [*pieces(2 * MiB), tail])
    assert "proj-000000000000" in refused(result, 404, "NOT_FOUND")
    wait_for(lambda: staging(server), lambda left: left == before, timeout=30)


def test_upload_streams_straight_to_its_staging_file_and_imports(server, tmp_path):
    """A chunked upload, looked at half-way: the replica writes it to staging/<import>/upload.zip and
    holds no temp file; then the import completes as with any upload."""
    gen = make_classification_folder(tmp_path / "streamed", per_class=4)
    zip_dir(gen.root, tmp_path / "streamed.zip")
    padding = os.urandom(3 * MiB)  # a stored member after the images, so half-way is > 1 MiB in
    with zipfile.ZipFile(tmp_path / "padded.zip", "w", zipfile.ZIP_STORED) as out, \
            zipfile.ZipFile(tmp_path / "streamed.zip") as src:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        out.writestr("streamed/notes/padding.bin", padding)
    archive = (tmp_path / "padded.zip").read_bytes()
    pid = create_project(server.http, name="streamed upload")
    replica = replica_pid()
    before = staging(server)
    head, tail = multipart("b0und", {"project_id": pid}, "file", "streamed.zip")
    cut = len(archive) - MiB
    seen = {}

    def writing():
        """(new staging folders, upload files the replica holds open) once ≥ 1 MiB reached staging."""
        new = staging(server) - before
        held = [f for f in open_files(replica) if f.endswith("/upload.zip")]
        written = sum((server.settings.workspace / "staging" / n / "upload.zip").stat().st_size
                      for n in new if (server.settings.workspace / "staging" / n / "upload.zip").exists())
        return (new, held) if held and written >= MiB else None

    def half_way():
        seen["new"], seen["held"] = wait_for(writing, lambda v: v is not None, timeout=60)
        seen["temp"] = temp_files(replica)

    result = exchange(server.url, "POST", "/api/datasets/import/upload",
                      auth(server, **{"Content-Type": "multipart/form-data; boundary=b0und"}),
                      [head, archive[:cut]], [archive[cut:], tail], during=half_way)
    assert seen["temp"] == [], seen
    (import_id,) = seen["new"]
    assert all(f.endswith(f"/staging/{import_id}/upload.zip") for f in seen["held"]), seen
    assert result.status == 202, result.body[:500]
    assert result.json()["data"]["id"] == import_id
    job = wait_import(server.http, pid, import_id, timeout=120)
    assert job["status"] == "completed" and job["added"] == gen.count, job
    assert job["source"] == "upload:streamed.zip"


def test_a_client_leaving_mid_upload_leaves_nothing(server):
    """The client sends 3 MiB of an upload, the replica is seen writing it to staging, then the
    client closes the connection: the partial file and its staging folder go, no file stays open."""
    pid = create_project(server.http, name="left mid-upload")
    replica = replica_pid()
    before = staging(server)
    head, _ = multipart("b0und", {"project_id": pid}, "file", "partial.zip")
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(request_head("POST", "/api/datasets/import/upload", parts.netloc,
                                  auth(server, **{"Content-Type": "multipart/form-data; boundary=b0und"}), None))
        for piece in [head, *pieces(3 * MiB)]:
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")

        def writing():
            held = [f for f in open_files(replica) if f.endswith("/upload.zip")]
            return held if held and staging(server) - before else None

        wait_for(writing, lambda held: held is not None, timeout=60)
    wait_for(lambda: (staging(server) - before, [f for f in open_files(replica) if "/staging/" in f]),
             lambda left: left == (set(), []), timeout=60)
    assert temp_files(replica) == []


# ----------------------------------------------------------------------------- the guard itself, in-process

def _run(middleware, scope, chunks):
    """Drive the middleware with a body arriving in `chunks`; return (what the app read, what was sent)."""
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    run_async(middleware(scope, receive, send))
    return sent


def _scope(path="/api/projects", method="POST", headers=()):
    return {"type": "http", "method": method, "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers],
            "query_string": b"", "root_path": ""}


def _app_reading_everything(read: list):
    async def app(scope, receive, send):
        while True:
            message = await receive()
            read.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def _app_answering_its_own_error(read: list):
    """An app that catches the cut-off and answers 400 itself: the guard's 413 must win."""
    async def app(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                read.append(1)
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad body"})
            return
    return app


@pytest.mark.parametrize("make_app", [_app_reading_everything, _app_answering_its_own_error])
def test_a_false_content_length_is_cut_at_the_limit(tmp_path, make_app):
    from appliance.http.limits import BodyLimitMiddleware

    settings = Settings(workspace=tmp_path, max_json_body_bytes=1000)
    read: list = []
    guard = BodyLimitMiddleware(make_app(read), settings)
    sent = _run(guard, _scope(headers=[("content-length", "10"), ("content-type", "application/json")]),
                [b"x" * 400] * 10)
    assert sent[0]["status"] == 413
    assert len(read) <= 3  # the app never got past the chunk that crossed 1000 bytes
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and "1000" in error["message"]


def test_bodies_within_the_limits_pass_untouched(tmp_path):
    from appliance.http.limits import BodyLimitMiddleware

    settings = Settings(workspace=tmp_path, max_json_body_bytes=1000, max_upload_bytes=10_000)
    for path, size in (("/api/projects", 1000), ("/api/datasets/import/upload", 10_000)):
        read: list = []
        sent = _run(BodyLimitMiddleware(_app_reading_everything(read), settings), _scope(path),
                    [b"x" * (size // 4)] * 4)
        assert sent[0]["status"] == 200 and sum(read) == size
    # not a number: refused before reading
    sent = _run(BodyLimitMiddleware(_app_reading_everything([]), settings), _scope(headers=[("content-length", "1e9")]),
                [b"x"])
    assert sent[0]["status"] == 400
