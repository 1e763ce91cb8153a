"""Starting and stopping Ray + Serve for the appliance (CLI, tests and benchmarks share this)."""

from __future__ import annotations

import logging
import time
import urllib.request

from appliance.config import Settings
from appliance.store.paths import Workspace

log = logging.getLogger("aistudio")
APP_NAME = "aistudio"


def start_appliance(settings: Settings, wait_healthy_s: float = 120.0) -> str:
    """Connect to (or start) Ray, deploy the ingress on settings.host:port, wait until healthy."""
    import ray
    from ray import serve

    Workspace(settings.workspace).ensure()
    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, namespace=APP_NAME)
        else:
            ray.init(
                namespace=APP_NAME,
                include_dashboard=True,
                dashboard_port=settings.ray_dashboard_port,
                # Reachable from outside only when the UI is (e.g. in Docker); Ray's token auth guards it.
                dashboard_host="0.0.0.0" if settings.host in ("0.0.0.0", "::") else "127.0.0.1",
                runtime_env={"env_vars": settings_env(settings)},
            )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    from appliance.serve import app_builder

    serve.run(app_builder(), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}"
    _wait_healthy(url, wait_healthy_s)
    return url


def settings_env(settings: Settings) -> dict[str, str]:
    """AISTUDIO_* variables for Ray's processes, so the ingress replica sees the CLI's settings."""
    env = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if name == "import_roots":
            value = ",".join(str(p) for p in value)
        env[f"AISTUDIO_{name.upper()}"] = str(value)
    return env


def _wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/system/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"AI Studio did not become healthy at {url} within {timeout_s:.0f}s")
        time.sleep(0.5)


def stop_appliance(settings: Settings) -> None:
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        if not settings.ray_address:
            ray.shutdown()
