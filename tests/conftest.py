"""Shared fixtures.

- `client`: the FastAPI app in-process (TestClient, lifespan on) over a fresh temp workspace and a
  real SQLite file — fast tests where Ray is not the point.
- `server`: ONE real local Ray + Serve deployment for the whole session (Ray start-up costs
  ~20 s); tests talk to it over real HTTP through the Serve proxy with `http`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from appliance.config import Settings  # noqa: E402
from appliance.main import create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "imports").mkdir()
    return Settings(workspace=tmp_path / "ws", import_roots=[tmp_path / "imports"], api_token=None)


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


@dataclass
class Server:
    url: str
    settings: Settings
    http: httpx.Client

    @property
    def import_root(self) -> Path:
        return self.settings.allowed_import_roots[0]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    from appliance.runtime import start_appliance, stop_appliance

    root = tmp_path_factory.mktemp("serve")
    (root / "imports").mkdir()
    settings = Settings(
        workspace=root / "ws", import_roots=[root / "imports"], port=free_port(),
        ray_dashboard_port=free_port(), api_token=None,
        # Test hooks: runs wait at gates a test closes (tests/ray_jobs/gates.py); quiet streams
        # send a keep-alive every second, so a test sees one without waiting long.
        training_gates=True, sse_keepalive_s=1.0,
    )
    url = start_appliance(settings)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield Server(url=url, settings=settings, http=http)
    stop_appliance(settings)


@pytest.fixture(scope="session")
def trained_classifier(server):
    """(project_id, split_id, experiment_id) of a classifier trained for one epoch through the real
    server — shared by the evaluation and export tests, since each training costs ~40 s here."""
    from tests.workflows import create_experiment, project_with_split, wait_experiment

    pid, sid = project_with_split(server.http, server.import_root, per_class=10)
    eid = create_experiment(server.http, pid, sid, epochs=1, name="shared-classifier")
    assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(server.http, pid, eid)["status"] == "completed"
    return pid, sid, eid
