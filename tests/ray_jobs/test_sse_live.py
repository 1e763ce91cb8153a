"""The live training stream (`GET /api/training/{p}/experiments/{e}/stream`) through the real Serve
ingress: a reconnect mid-run with Last-Event-ID, keep-alives while a run is quiet, odd ids.

The run is held at an epoch boundary by the training gates (`tests/ray_jobs/gates.py`), so "mid-run"
and "quiet" are facts the test arranged, not timing luck.
"""

from __future__ import annotations

import json

import pytest

from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, project_with_split, read_sse, wait_experiment

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dataset(server):
    return project_with_split(server.http, server.import_root, per_class=6, ratios=(0.5, 0.25, 0.25))


def stream_url(pid: str, eid: str) -> str:
    return f"/api/training/{pid}/experiments/{eid}/stream"


def sse_items(response):
    """Everything a stream sends, in order: ("comment", text) per `:` line, ("event", kind, data, id) per event."""
    current: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield ("comment", line[1:].strip())
        elif not line:
            if "event" in current:
                yield ("event", current["event"], json.loads(current.get("data", "null")), current.get("id"))
            current = {}
        else:
            key, _, value = line.partition(": ")
            current[key] = value


def test_reconnect_mid_run_gets_every_epoch_exactly_once_and_keepalives_while_quiet(server, dataset):
    pid, sid = dataset
    eid = create_experiment(server.http, pid, sid, epochs=3, name="sse-reconnect")
    gates = Gates(eid).close("epoch:3")
    try:
        assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
        # First connection, from the start: live events up to the first epoch, then it drops.
        first = read_sse(server.http, stream_url(pid, eid), until="epoch_end")
        assert [(e[1]["epoch"], e[2]) for e in first if e[0] == "epoch_end"] == [(1, "1")]

        gates.wait_arrival("epoch:3")  # epoch 2 ended while nobody listened; the run now waits, quiet
        second, keepalives = [], 0
        with server.http.stream("GET", stream_url(pid, eid), headers={"Last-Event-ID": first[-1][2]}, timeout=300) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for item in sse_items(r):
                if item[0] == "comment":
                    assert item[1] == "keep-alive"
                    keepalives += 1
                    if keepalives == 2:  # quiet seen twice: let the last epoch run
                        gates.open("epoch:3")
                    continue
                second.append((item[1], item[2], item[3], keepalives))
                if item[1] == "complete":
                    break
    finally:
        gates.open()

    assert second[0][:2] == ("status", {"status": "running"})  # it reconnected mid-run
    epochs = [(data["epoch"], event_id, beats) for kind, data, event_id, beats in second if kind == "epoch_end"]
    assert [(epoch, event_id) for epoch, event_id, _ in epochs] == [(2, "2"), (3, "3")]  # 1 came on the first connection
    assert epochs[0][2] == 0 and epochs[1][2] >= 2  # epoch 2 from history at once; 3 only after the quiet spell
    assert keepalives >= 2
    exp = wait_experiment(server.http, pid, eid)
    assert second[-1][:2] == ("complete", {"status": "completed", "best_metric": exp["best_metric"], "error": None})
    assert [h["epoch"] for h in exp["history"]] == [1, 2, 3]


@pytest.mark.parametrize(
    "last_event_id, seen",  # seen: the epoch the id stands for (None: not an epoch number)
    [
        (b"abc", None),
        (b"-1", None),
        (b"\xb2", None),  # '²' (latin-1 on the wire): str.isdigit() says yes, int() says no
        ("²".encode(), None),
        (b"1.5", None),
        (b"", None),
        (b"0", 0),
        (b"1", 1),
        (b"99999999999999999999999", 99999999999999999999999),
    ],
)
def test_odd_last_event_ids_are_ignored_not_errors(server, trained_classifier, last_event_id, seen):
    """docs/api.md: a Last-Event-ID that is not an epoch number is ignored (the whole history is sent);
    an epoch number replays the epochs after it."""
    pid, _, eid = trained_classifier
    epochs = server.http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]["epochs_done"]
    assert epochs >= 2  # so that "the epochs after 1" is not the empty list
    replayed = [n for n in range(1, epochs + 1) if seen is None or n > seen]
    events = read_sse(server.http, stream_url(pid, eid), headers={"Last-Event-ID": last_event_id})
    assert [e[0] for e in events] == ["status"] + ["epoch_end"] * len(replayed) + ["complete"]
    assert [e[1]["epoch"] for e in events if e[0] == "epoch_end"] == replayed
    assert events[-1][1]["status"] == "completed"
