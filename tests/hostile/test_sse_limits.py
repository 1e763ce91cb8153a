"""Issue #12 item 9: live training streams (SSE) are capped and never block the event loop.

- Through the real Serve ingress (session `server`, default cap AISTUDIO_MAX_SSE_STREAMS = 100): a
  run held queued at its `start` gate (tests/ray_jobs/gates.py) keeps its streams open; 100 open, the
  101st gets 429 with Retry-After while the API keeps answering; a closed stream frees its slot; once
  the gate opens every stream gets the run's epoch and `complete` (one shared feed serves them all).
- In-process, with Ray up: every database and Ray call a stream makes runs off the event loop (a spy
  on the app's session factory, `ray_is_up` and `get_event_bus` records the thread of each call).
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray


def stream_url(pid: str, eid: str) -> str:
    return f"/api/training/{pid}/experiments/{eid}/stream"


class Stream(threading.Thread):
    """One SSE client; records (event, data) until the stream ends or `close()`."""

    def __init__(self, server, url: str):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                                   timeout=httpx.Timeout(30, read=300))
        self.url, self.opened, self.events, self.error, self.status = url, threading.Event(), [], None, None

    def run(self) -> None:
        try:
            with self.client.stream("GET", self.url) as resp:
                self.status = resp.status_code
                current = {}
                for line in resp.iter_lines():
                    if not line:
                        if "event" in current:
                            self.events.append((current["event"], json.loads(current.get("data", "null"))))
                            self.opened.set()
                        current = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(": ")
                        current[key] = value
        except Exception as exc:
            self.error = exc
        finally:
            self.opened.set()

    def close(self) -> None:
        self.client.close()


def test_streams_beyond_the_cap_get_429_and_the_api_keeps_answering(server):
    cap = server.settings.max_sse_streams
    pid, sid = project_with_split(server.http, server.import_root, per_class=6, ratios=(0.5, 0.25, 0.25))
    eid = create_experiment(server.http, pid, sid, epochs=1, name="capped")
    gates = Gates(eid).close("start")
    streams: list[Stream] = []
    try:
        assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
        gates.wait_arrival("start")  # queued, its driver waiting: the streams stay open
        streams = [Stream(server, stream_url(pid, eid)) for _ in range(cap)]
        for s in streams:
            s.start()
        for s in streams:
            assert s.opened.wait(120) and s.status == 200 and s.events[:1] == [("status", {"status": "queued"})], \
                (s.status, s.events, s.error)

        r = _one_more(server, pid, eid)
        assert r.status_code == 429, f"stream {cap + 1} got {r.status_code}"
        assert r.json()["error"]["code"] == "TOO_MANY_REQUESTS" and "AISTUDIO_MAX_SSE_STREAMS" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) > 0
        for _ in range(3):  # the other routes are not held up by the open streams
            assert server.http.get("/api/system/health").status_code == 200
            assert server.http.get("/api/projects").status_code == 200

        # A stream that goes away frees its slot (the server notices the disconnect).
        streams[0].close()
        streams[0].join(30)
        extra = wait_for(lambda: _try_open(server, pid, eid), lambda s: s is not None, timeout=60, every=0.5)
        streams[0] = extra
        assert _one_more(server, pid, eid).status_code == 429
    finally:
        gates.open()
    assert wait_experiment(server.http, pid, eid)["status"] == "completed"
    for s in streams:
        s.join(120)
        assert not s.is_alive()
        kinds = [kind for kind, _ in s.events]
        epochs = [data["epoch"] for kind, data in s.events if kind == "epoch_end"]
        assert epochs == [1] and kinds[-1] == "complete" and s.events[-1][1]["status"] == "completed", (kinds, s.error)
        s.close()


def _one_more(server, pid: str, eid: str) -> httpx.Response:
    """One more stream request: its status and headers, and the body only when it is not a live stream."""
    with server.http.stream("GET", stream_url(pid, eid)) as r:
        if r.status_code != 200:
            r.read()
    return r


def _try_open(server, pid: str, eid: str) -> Stream | None:
    s = Stream(server, stream_url(pid, eid))
    s.start()
    s.opened.wait(60)
    if s.status == 200:
        return s
    s.join(10)
    s.close()
    return None


# ---------------------------------------------------------------- no blocking call on the event loop

def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_a_stream_makes_its_database_and_ray_calls_off_the_event_loop(server, settings, monkeypatch):
    """`server` only brings Ray up in this process (the in-process app finds the event bus there)."""
    from fastapi.testclient import TestClient

    from appliance.main import create_app
    from appliance.store.db import session_scope
    from appliance.store.ids import new_id
    from appliance.store.tables import Experiment, Split, utcnow
    import appliance.api.training as training_api
    import ray_jobs.events as events

    on_loop: list[str] = []
    calls: list[str] = []

    def spied(name, fn):
        def call(*args, **kwargs):
            calls.append(name)
            if _on_event_loop():
                on_loop.append(name)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(training_api, "ray_is_up", spied("ray_is_up", training_api.ray_is_up))
    monkeypatch.setattr(events, "get_event_bus", spied("get_event_bus", events.get_event_bus))
    with TestClient(create_app(settings)) as client:
        app = client.app
        app.state.sessions = spied("session", app.state.sessions)
        pid = client.post("/api/projects", json={"name": "loop", "task": "classification"}).json()["data"]["id"]
        split_id, eid = new_id("split"), new_id("experiment")
        with session_scope(settings.db_url) as s:  # a run in progress (heart-beating) in this app's database
            s.add(Split(id=split_id, project_id=pid, name="s", train=0.8, val=0.2, test=0.0, seed=0,
                        stratified=True, counts={}))
            s.flush()
            s.add(Experiment(id=eid, project_id=pid, split_id=split_id, name="live", model="resnet18",
                             params={"task": "classification", "epochs": 1}, class_names=["a", "b"],
                             status="running", heartbeat_at=utcnow(), started_at=utcnow()))
        calls.clear()

        def end_run_once_streaming():
            # The stream has opened once it read the run and found the bus; then the run ends.
            wait_for(lambda: list(calls), lambda c: "get_event_bus" in c, timeout=60, every=0.05)
            with session_scope(settings.db_url) as s:
                exp = s.get(Experiment, eid)
                exp.status, exp.finished_at = "completed", utcnow()

        ender = threading.Thread(target=end_run_once_streaming, daemon=True)
        ender.start()
        r = client.get(stream_url(pid, eid))  # returns when the stream ends (the feed reads the database)
        ender.join(10)
    assert r.status_code == 200
    kinds = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert kinds == ["status", "complete"]
    assert {"session", "ray_is_up", "get_event_bus"} <= set(calls)
    assert on_loop == [], f"blocking calls made on the event loop: {on_loop}"
