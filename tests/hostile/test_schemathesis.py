"""Issue #12, "Tests": schemathesis against the app's own `/openapi.json`, in-process (ASGI).

Every operation of the schema gets a bounded number of generated requests (valid and invalid
bodies, parameters, odd strings). Half of the generated path and body ids are replaced by ids of
real records (a project with an imported dataset, a split, an experiment), so requests get past
the 404s into the code behind them. The checks:

- no 5xx, ever;
- every 4xx is the error envelope `{"status": "error", "error": {"code": str, "message": str}}`.

Ray is not running in-process. Starting a training run, an evaluation, a prediction or an export,
and the live event stream, need the Ray cluster: once a request gets past validation, those
operations answer `503 UNAVAILABLE` ("Ray is not reachable…") at once, by design (nothing is
queued, nothing hangs), and `GET /api/system/health` answers 503 "Down: ray" (docs/api.md). For exactly those operations that one 503 envelope is accepted; they are
still fuzzed, since validation and lookups happen before the Ray check. DELETE operations keep
their generated ids, so the seeded records survive for the operations after them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings, strategies as st

from appliance.config import Settings
from appliance.main import create_app
from tests.fixtures import create_project, import_and_wait, list_all_images, make_classification_folder
from tests.workflows import create_experiment

NEEDS_RAY = {
    ("POST", "/api/training/run"),
    ("GET", "/api/training/{project_id}/experiments/{experiment_id}/stream"),
    ("POST", "/api/evaluation/run"),
    ("POST", "/api/evaluation/{project_id}/predict"),
    ("POST", "/api/export/run"),
    ("GET", "/api/system/health"),  # 503 "Down: ray" is its answer when Ray is absent (a load balancer's signal)
}
RAY_UNAVAILABLE = ("Ray is not reachable", "Down: ray")

# The workspace is created (and removed) by the `seeded` fixture; nothing touches it at import.
SCRATCH = Path(tempfile.gettempdir()) / f"aistudio-schemathesis-{os.getpid()}"
SETTINGS = Settings(workspace=SCRATCH / "ws", import_roots=[SCRATCH / "imports"], api_token=None)
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # requests go to the app in-process (ASGI); its lifespan starts with the first one
IDS: dict[str, str] = {}  # path parameter / body field -> the id of a real record


@pytest.fixture(scope="module", autouse=True)
def seeded():
    """A project with an imported dataset, a split and an experiment, seeded through a TestClient
    whose lifespan ends before schemathesis starts its own on the same workspace."""
    (SCRATCH / "imports").mkdir(parents=True)
    try:
        with TestClient(APP) as client:
            pid = create_project(client)
            source = make_classification_folder(SCRATCH / "imports" / "ds", per_class=4, size=16).root
            job = import_and_wait(client, pid, source)
            assert job["status"] == "completed", job
            image = list_all_images(client, pid)[0]
            r = client.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.25, "test": 0.25, "seed": 1})
            assert r.status_code == 201, r.text
            sid = r.json()["data"]["id"]
            eid = create_experiment(client, pid, sid, epochs=1)
        IDS.update(project_id=pid, import_id=job["id"], image_id=image["id"], filename=image["filename"],
                   split_id=sid, experiment_id=eid, source_path=str(source))
        yield
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    real = {key: IDS[key] for key in path_parameters or {} if key in IDS}
    if not real or context.operation.method.upper() == "DELETE":
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, **real}])


@schema.hook
def flatmap_body(context, body):
    if not isinstance(body, dict):
        return st.just(body)
    real = {key: IDS[key] for key in body if key in IDS}
    variants = [body, {**body, **real}]
    if isinstance(text := body.get("source_path"), str):  # the generated text as a path on the server
        variants += [{**body, **real, "source_path": path}
                     for path in (f"{IDS['source_path']}/{text}", f"/{text}", f"~{text}")]
    return st.sampled_from(variants) if real else st.just(body)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@pytest.mark.timeout(600)
def test_no_5xx_and_every_4xx_is_the_envelope(case):
    response = case.call()
    status = response.status_code
    operation = (case.operation.method.upper(), case.operation.path)
    where = f"{operation[0]} {case.formatted_path} -> {status}: {response.content[:300]!r}"
    if status == 503 and operation in NEEDS_RAY:
        error = response.json()["error"]
        assert error["code"] == "UNAVAILABLE" and error["message"].startswith(RAY_UNAVAILABLE), where
        return
    assert status < 500, where
    if status >= 400:
        body = response.json()
        assert set(body) == {"status", "error"} and body["status"] == "error", where
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), where
        assert body["error"]["message"], where
