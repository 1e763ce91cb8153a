"""Shared fixtures.

- `client`: the FastAPI app in-process (TestClient, lifespan on) over a fresh temp workspace and a
  real SQLite file — fast tests where Ray is not the point. No API token. Tests marked
  `tests.pg.both_backends` run again on a fresh database of a throwaway PostgreSQL server (tests/pg.py).
- `server`: ONE real local Ray + Serve deployment for the whole session (Ray start-up costs
  ~20 s), started WITH an API token; tests talk to it over real HTTP through the Serve proxy with
  `server.http`, which sends `Authorization: Bearer <token>`. `server.anon()` is a client without it.

Hygiene: the developer's environment can't steer the tests. Every `AISTUDIO_*` variable (and
`RAY_ADDRESS`) is removed at import, `Settings` ignores `.env` files in this process, and Ray's
processes start in the server's temp folder (they read no `.env` from the checkout either). The
dashboard binds a free port itself; the HTTP port is retried when another process holds it.
After each test that uses the server, no job it started may still be queued or running.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.ports import free_port

if TYPE_CHECKING:
    import httpx

for _name in [n for n in os.environ if n.startswith("AISTUDIO_")] + ["RAY_ADDRESS"]:
    os.environ.pop(_name, None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

try:
    from appliance.config import Settings, get_settings
except ImportError:  # a GPU check host with only the Ray-free core's packages (`pytest -m gpu`)
    Settings = None
else:
    # A `.env` in the working directory must not reach any Settings built in this process (the
    # in-process app, get_settings(), other modules' fixtures): pydantic-settings reads this at
    # each instantiation, so clearing it here covers every Settings() of the test session.
    Settings.model_config["env_file"] = None
    get_settings.cache_clear()
    # Starlette's TestClient sends `Host: testserver`: in-process apps of this session answer it too
    # (the Serve server runs in Ray's processes with the real defaults; tests/hostile/test_hosts.py).
    from appliance.http.hosts import AllowedHostsMiddleware

    AllowedHostsMiddleware.test_hosts = ("testserver",)

# Job rows that count as work in progress (imports also pass through `cancelling`).
ACTIVE_STATUSES = ("queued", "running", "cancelling")


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server (tests/pg.py). Without its binaries its tests are skipped, and fail in CI."""
    from tests import pg

    reason = pg.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the PostgreSQL tests must run in CI: {reason}")
        pytest.skip(reason)
    server = pg.PgServer().start()
    yield server
    server.stop()


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("both_backends") and "database_url" in metafunc.fixturenames:
        from tests.pg import BACKENDS

        metafunc.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture
def database_url(request) -> str | None:
    """None (SQLite in the workspace), or with `tests.pg.both_backends` a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    (tmp_path / "imports").mkdir()
    return Settings(workspace=tmp_path / "ws", import_roots=[tmp_path / "imports"], api_token=None,
                    database_url=database_url)


@pytest.fixture
def client(settings: Settings):
    from fastapi.testclient import TestClient

    from appliance.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@dataclass
class Server:
    url: str
    settings: Settings
    http: httpx.Client
    token: str

    @property
    def import_root(self) -> Path:
        return self.settings.allowed_import_roots[0]

    def anon(self, **kwargs) -> httpx.Client:
        """A client of the same server without the token (close it: use it in a `with`)."""
        import httpx

        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


def _ray_agent_on_any_port() -> None:
    """Ray's dashboard agent listens on 52365 in every local cluster, so a second test session on
    the same machine gets an agent without HTTP ("No available agent to submit job"). ray.init
    has no option for it; its RayParams do, and port 0 makes the agent bind a free port and
    publish it. Test sessions only: the appliance keeps Ray's default."""
    import functools

    from ray._private.parameter import RayParams

    if getattr(RayParams.__init__, "_any_agent_port", False):
        return
    original = RayParams.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", 0)
        original(self, *args, **kwargs)

    init._any_agent_port = True
    RayParams.__init__ = init


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    import httpx

    from appliance.runtime import PortInUse, start_appliance, stop_appliance

    root = tmp_path_factory.mktemp("serve")
    (root / "imports").mkdir()
    token = secrets.token_urlsafe(24)
    settings = Settings(workspace=root / "ws", import_roots=[root / "imports"], port=free_port(),
                        ray_dashboard_port=0, api_token=token,
                        # Test hooks: runs wait at gates a test closes (tests/ray_jobs/gates.py); quiet
                        # streams send a keep-alive every second, so a test sees one without waiting long.
                        training_gates=True, sse_keepalive_s=1.0,
                        # Small enough that tests/hostile/test_body_limits.py can stream past it.
                        max_upload_bytes=64 * 1024**2)
    # Serve's proxy shares a port with any other SO_REUSEPORT listener (another session's Serve on
    # this machine) unless told not to; then a taken port fails start_appliance and we pick again.
    os.environ["SERVE_SOCKET_REUSE_PORT_ENABLED"] = "0"
    _ray_agent_on_any_port()
    cwd = os.getcwd()
    os.chdir(root)  # Ray's processes keep the working directory of ray.init: no checkout `.env` there
    try:
        for attempt in range(5):
            try:
                url = start_appliance(settings)
                break
            except PortInUse:
                if attempt == 4:
                    raise
                settings.port = free_port()
    finally:
        os.chdir(cwd)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        yield Server(url=url, settings=settings, http=http, token=token)
    stop_appliance(settings)


def active_jobs(settings: Settings) -> dict[str, tuple[str, str]]:
    """id → (kind, status) of every import, experiment, evaluation and export not yet finished,
    read from the server's database."""
    from sqlalchemy import select

    from appliance.store.db import session_scope
    from appliance.store.tables import Evaluation, Experiment, Export, ImportJob

    found = {}
    with session_scope(settings.db_url) as s:
        for kind, model in (("import", ImportJob), ("experiment", Experiment), ("evaluation", Evaluation),
                            ("export", Export)):
            for row in s.scalars(select(model).where(model.status.in_(ACTIVE_STATUSES))):
                found[row.id] = (kind, row.status)
    return found


@pytest.fixture(autouse=True)
def no_job_left_active(request):
    """A test that uses the server must wait for (or stop) every job it started."""
    if "server" not in request.fixturenames:
        yield
        return
    settings = request.getfixturevalue("server").settings
    before = active_jobs(settings)
    yield
    left = {job: state for job, state in active_jobs(settings).items() if job not in before}
    assert not left, f"{request.node.nodeid} left jobs active (wait for them or stop them): {left}"


def pytest_runtest_setup(item):
    from tests.host import cuda_available

    if item.get_closest_marker("gpu") and not cuda_available():
        pytest.skip("needs a CUDA GPU (benchmarks/gpu_check.sh runs these on a GPU host)")


@pytest.fixture(scope="session")
def trained_classifier(server):
    """(project_id, split_id, experiment_id) of a classifier trained through the real server —
    shared by the evaluation and export tests, since each training costs ~40 s here. The evaluation
    tests require it to beat the majority class on 4 images with both checkpoints. Ten epochs (30
    steps) on a cosine schedule: at a constant learning rate the last epoch could still jump (2 of 6
    in-process trials answered one class on val/last), and fewer epochs left BatchNorm's running
    statistics near their initial values. With the cosine schedule and `best` broken by val_loss
    among equal accuracies, 14 of 14 trials were right on every image of both subsets."""
    from tests.workflows import create_experiment, project_with_split, wait_experiment

    pid, sid = project_with_split(server.http, server.import_root, per_class=10)
    eid = create_experiment(server.http, pid, sid, epochs=10, scheduler="cosine", name="shared-classifier")
    assert server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(server.http, pid, eid)["status"] == "completed"
    return pid, sid, eid
