"""HTTP workflows shared by tests: a project with an imported dataset and a split, a trained
experiment. They drive the real API (in-process `client` or the Serve `server.http`)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tests.fixtures import make_classification_folder, make_detection_coco

TERMINAL = ("completed", "failed", "stopped", "interrupted", "cancelled")


def wait_for(fetch, done, timeout: float = 120, every: float = 0.3):
    """Call `fetch()` until `done(value)`; return the value or fail with the last one seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last value: {value}")
        time.sleep(every)


def import_folder(http, project_id: str, source: Path, fmt: str = "auto") -> dict:
    r = http.post("/api/datasets/import/local", json={"project_id": project_id, "source_path": str(source), "format": fmt})
    assert r.status_code == 202, r.text
    job_id = r.json()["data"]["id"]
    job = wait_for(lambda: http.get(f"/api/datasets/{project_id}/imports/{job_id}").json()["data"],
                   lambda j: j["status"] in TERMINAL, timeout=60)
    assert job["status"] == "completed", job
    return job


def project_with_split(http, import_root: Path, task: str = "classification", per_class: int = 10,
                       ratios=(0.6, 0.2, 0.2), size: int = 32) -> tuple[str, str]:
    """Create a project, import a generated dataset, split it; return (project_id, split_id)."""
    pid = http.post("/api/projects", json={"name": f"{task}-{uuid.uuid4().hex[:6]}", "task": task}).json()["data"]["id"]
    source = import_root / f"ds-{uuid.uuid4().hex[:8]}"
    if task == "classification":
        make_classification_folder(source, per_class=per_class, size=size)
    else:
        make_detection_coco(source, n=per_class * 2, size=size)
    import_folder(http, pid, source)
    train, val, test = ratios
    r = http.post(f"/api/splits/{pid}", json={"name": "s", "train": train, "val": val, "test": test, "seed": 1})
    assert r.status_code == 201, r.text
    return pid, r.json()["data"]["id"]


def create_experiment(http, pid: str, sid: str, **overrides) -> str:
    """resnet18 at 32 px learns the generated colour classes in one epoch on a CPU (mobilenet_v3 at
    that size stays at chance for a few epochs, which makes argmax comparisons brittle)."""
    body = {"name": "exp", "split_id": sid, "model": "resnet18", "epochs": 2, "batch_size": 4,
            "image_size": 32, "scheduler": "none", **overrides}
    r = http.post(f"/api/training/{pid}/experiments", json=body)
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def experiment(http, pid: str, eid: str) -> dict:
    return http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]


def wait_experiment(http, pid: str, eid: str, statuses=("completed", "failed", "stopped", "interrupted"), timeout=300):
    return wait_for(lambda: experiment(http, pid, eid), lambda e: e["status"] in statuses, timeout=timeout, every=0.5)


def read_sse(http, url: str, timeout: float = 300, headers: dict | None = None, until: str = "complete") -> list[tuple]:
    """(event, data, id) triples of an SSE stream, up to and including the `until` event."""
    events, current = [], {}
    with http.stream("GET", url, timeout=timeout, headers=headers or {}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line:
                if "event" in current:
                    events.append((current["event"], json.loads(current.get("data", "null")), current.get("id")))
                    if current["event"] == until:
                        return events
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return events
