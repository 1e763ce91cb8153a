"""What Ray Serve costs AI Studio: API latency per serve mode vs plain uvicorn (issues 2 and 14.1).

Latency (the default run). Plain uvicorn serves the same FastAPI app (`appliance.main:create_app`, same
settings via AISTUDIO_* env vars, same SQLite workspace with a few projects) in a subprocess for the whole
run. Each serve mode (`--modes`) then gets its own `aistudio serve` process (its own local Ray, started
with that mode's environment), on the same workspace:

  proxy               AISTUDIO_SERVE_MODE=proxy: Ray Serve's Python HTTP proxy -> replica (v0.1)
  throughput          AISTUDIO_SERVE_MODE=throughput: RAY_SERVE_THROUGHPUT_OPTIMIZED=1
  direct              RAY_SERVE_ENABLE_DIRECT_INGRESS=1 (the port is still the proxy's; the replica's own
                      port, found among the process's listeners, is measured too as `replica`)
  haproxy             AISTUDIO_SERVE_MODE=haproxy (the default): RAY_SERVE_ENABLE_HA_PROXY=1
  haproxy+throughput  both switches

With a mode up: one client in series (unloaded p50/p99, interleaved with uvicorn, twice), then locust
(headless, FastHttpUser, no wait) GETs /api/projects at each `--users` count for `--duration` s per
target, alternating the order over `--rounds`; p50/p99/req/s from locust's CSV; ratios vs the uvicorn
runs of the same block. Target (issue 14.1): p50 <= 1.3x and req/s >= 0.8x of uvicorn at 10 and 50 users.

Cold start and idle memory (`--cold-start`): in this process, bare `ray.init` + an empty Serve app,
then `start_appliance` (default mode); RSS/PSS summed over that Ray session's processes.

    python benchmarks/serve_overhead.py                          # proxy, throughput, haproxy: ~5 min
    python benchmarks/serve_overhead.py --modes all --rounds 2   # every mode: ~12 min on 2 busy cores

Prints each run, a summary of ratios, the load average before/after, and a JSON line
(`{"benchmark": "serve_overhead", ...}`). On a shared host only the ratios mean much.
"""


from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO, emit_json, free_port, gib, load_avg, machine, percentile, ray_init, ray_processes_memory, ray_session_dir,
    run_locust_headless, wait_http,
)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

LOCUSTFILE = '''
from locust import FastHttpUser, constant, task


class ApiUser(FastHttpUser):
    wait_time = constant({wait})

    @task
    def projects(self):
        with self.client.get("/api/projects", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {{resp.status_code}}")
'''


# --------------------------------------------------------------------------- the empty Serve app

def _empty_app():
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @api.get("/health")
    def health():
        return {"ok": True}

    @serve.deployment(name="EmptyIngress", num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class EmptyIngress:
        pass

    return EmptyIngress.bind()


def start_bare() -> tuple[dict, callable]:
    from ray import serve

    port = free_port()
    init_s = ray_init(free_port(), "bench-bare")
    start = time.monotonic()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(_empty_app(), name="empty", route_prefix="/", blocking=False)
    wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180, every_s=0.5)
    serve_s = time.monotonic() - start

    def stop():
        import ray

        serve.shutdown()
        ray.shutdown()

    return {"ray_init_s": init_s, "serve_to_healthy_s": serve_s, "cold_start_s": init_s + serve_s}, stop


def start_aistudio(settings) -> tuple[dict, callable, str]:
    from appliance.config import settings_env
    from appliance.runtime import APP_NAME, start_appliance, stop_appliance

    init_s = ray_init(settings.ray_dashboard_port, APP_NAME, settings_env(settings))
    start = time.monotonic()
    url = start_appliance(settings, wait_healthy_s=180)
    serve_s = time.monotonic() - start
    return ({"ray_init_s": init_s, "serve_to_healthy_s": serve_s, "cold_start_s": init_s + serve_s},
            lambda: stop_appliance(settings), url)


def idle_memory(settle_s: float) -> dict:
    time.sleep(settle_s)
    return ray_processes_memory(ray_session_dir())


def wait_children_gone(timeout_s: float = 30) -> None:
    import psutil

    deadline = time.monotonic() + timeout_s
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.5)


# --------------------------------------------------------------------------- locust

def run_locust(host: str, users: int, duration_s: int, wait_s: float, workdir: Path, tag: str) -> dict:
    locustfile = workdir / "locustfile.py"
    if not locustfile.exists():
        locustfile.write_text(LOCUSTFILE.format(wait=wait_s))
    prefix = workdir / tag
    proc = run_locust_headless(locustfile, host, users, duration_s, prefix, stop_timeout_s=5, slack_s=90)
    rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))
    agg = next((r for r in rows if r["Name"] == "Aggregated"), None)
    if agg is None or int(agg["Request Count"]) == 0:
        agg = _summary_from_stdout(proc.stdout + proc.stderr)  # on a loaded host the last CSV write is sometimes missed
    if agg is None or int(agg["Request Count"]) == 0:
        raise RuntimeError(f"locust produced no requests against {host}: rc={proc.returncode}\n{proc.stderr[-2000:]}")
    return {
        "requests": int(agg["Request Count"]),
        "failures": int(agg["Failure Count"]),
        "p50_ms": float(agg["50%"]),
        "p99_ms": float(agg["99%"]),
        "mean_ms": round(float(agg["Average Response Time"]), 2),
        "rps": round(float(agg["Requests/s"]), 1),
    }


def _summary_from_stdout(text: str) -> dict | None:
    """The Aggregated rows of locust's printed summary, in the CSV's field names."""
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("Aggregated")]
    if len(rows) < 2:
        return None
    stats, pct = rows[0], rows[1]  # Aggregated reqs fails(%) | avg min max med | req/s failures/s ; 50% .. 100% reqs
    nums = [x for x in stats[1:] if x != "|"]
    return {"Request Count": nums[0], "Failure Count": nums[1].split("(")[0], "50%": pct[1], "99%": pct[8],
            "Average Response Time": nums[2], "Requests/s": nums[6]}


def serial_latency(url: str, n: int) -> dict:
    """One client, one request at a time (also warms the target up): the unloaded latency."""
    import httpx

    times = []
    with httpx.Client(timeout=30) as http:
        for _ in range(5):
            http.get(f"{url}/api/projects").raise_for_status()
        for _ in range(n):
            start = time.perf_counter()
            http.get(f"{url}/api/projects").raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return {"n": n, "p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}


def start_uvicorn(settings, port: int) -> subprocess.Popen:
    from appliance.config import settings_env

    env = {**os.environ, **settings_env(settings), "AISTUDIO_PORT": str(port)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "appliance.main:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/projects", timeout_s=90)
    except Exception:
        proc.kill()
        raise RuntimeError(f"uvicorn did not start: {proc.stderr.read()[-2000:]}") from None
    return proc


def _mean(rows: list[dict], key: str) -> float:
    return round(sum(r[key] for r in rows) / len(rows), 2)


# --------------------------------------------------------------------------- main

# Serve modes measured: name -> (AISTUDIO_SERVE_MODE, extra environment for that appliance's Ray)
MODES: dict[str, tuple[str, dict[str, str]]] = {
    "proxy": ("proxy", {}),                         # Ray's default: Serve's HTTP proxy -> replica
    "throughput": ("throughput", {}),               # RAY_SERVE_THROUGHPUT_OPTIMIZED=1
    "direct": ("proxy", {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}),  # the replica serves HTTP too; port: proxy
    "haproxy": ("haproxy", {}),                     # RAY_SERVE_ENABLE_HA_PROXY=1
    "haproxy+throughput": ("haproxy", {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
}
DEFAULT_MODES = "proxy,throughput,haproxy"
REPLICA_PORTS = range(30000, 31001)  # RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT


def start_serve_mode(settings, mode: str, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`aistudio serve` in its own process (its own Ray, started with the mode's environment)."""
    from appliance.config import settings_env

    serve_mode, extra = MODES[mode]
    env = {**os.environ, **settings_env(settings), "AISTUDIO_PORT": str(port), "AISTUDIO_RAY_DASHBOARD_PORT": "0",
           "AISTUDIO_SERVE_MODE": serve_mode, "SERVE_SOCKET_REUSE_PORT_ENABLED": "0", **extra}
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--port", str(port)], cwd=log.parent,
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api/projects", timeout_s=240, every_s=0.5)
    except Exception:
        stop_serve_mode(proc)
        raise RuntimeError(f"{mode}: the appliance did not start:\n{log.read_text()[-3000:]}") from None
    return proc, url


def stop_serve_mode(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # `aistudio serve` stops Serve and its Ray, bounded
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    wait_children_gone()


def replica_http_port(proc: subprocess.Popen) -> int | None:
    """The port the ingress replica itself listens on (direct ingress), among this appliance's processes."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            for conn in child.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port in REPLICA_PORTS:
                    return conn.laddr.port
        except psutil.Error:
            continue
    return None


def compare(targets: dict[str, str], users: int, args, workdir: Path, tag: str) -> dict:
    """Locust on each target (alternating order over rounds); mean p50/p99/req/s, ratios vs uvicorn."""
    runs: dict[str, list[dict]] = {name: [] for name in targets}
    for r in range(args.rounds):
        order = list(targets) if r % 2 == 0 else list(reversed(targets))
        for name in order:
            row = run_locust(targets[name], users, args.duration, args.wait, workdir, f"{tag}-{name}-{users}-{r}")
            runs[name].append(row)
            print(f"    {users:>3} users {name:>8}: p50 {row['p50_ms']:.0f} ms  p99 {row['p99_ms']:.0f} ms  "
                  f"{row['rps']:.0f} req/s  ({row['requests']} requests, {row['failures']} failed)", flush=True)
    out = {name: {"p50_ms": _mean(rows, "p50_ms"), "p99_ms": _mean(rows, "p99_ms"), "rps": _mean(rows, "rps"),
                  "failures": sum(x["failures"] for x in rows)} for name, rows in runs.items()}
    base = out["uvicorn"]
    for name, side in out.items():
        if name == "uvicorn":
            continue
        side["ratio_p50"] = round(side["p50_ms"] / base["p50_ms"], 3)
        side["ratio_p99"] = round(side["p99_ms"] / base["p99_ms"], 3)
        side["ratio_rps"] = round(side["rps"] / base["rps"], 3)
        side["target_met"] = side["ratio_p50"] <= TARGET_P50 and side["ratio_rps"] >= TARGET_RPS
    return out


TARGET_P50 = 1.3  # issue 14 item 1: p50 <= 1.3x plain uvicorn and req/s >= 0.8x, at 10 and 50 users
TARGET_RPS = 0.8


def latency_by_mode(settings, args, tmp: Path) -> dict:
    import httpx

    uv_port = free_port()
    uvicorn = start_uvicorn(settings, uv_port)
    uv_url = f"http://127.0.0.1:{uv_port}"
    results: dict = {}
    try:
        with httpx.Client(base_url=uv_url, timeout=30) as http:
            for i in range(args.projects):
                http.post("/api/projects", json={"name": f"bench-{i}", "task": "classification"}).raise_for_status()
        for mode in args.modes.split(","):
            print(f"mode {mode}: starting AI Studio ({MODES[mode]}) ...", flush=True)
            started = time.monotonic()
            proc, url = start_serve_mode(settings, mode, free_port(), tmp / f"serve-{mode}.log")
            entry: dict = {"start_s": round(time.monotonic() - started, 1)}
            try:
                targets = {"uvicorn": uv_url, "serve": url}
                replica = replica_http_port(proc) if mode == "direct" else None
                if replica:  # what direct ingress could give a client that found the replica's own port
                    targets["replica"] = f"http://127.0.0.1:{replica}"
                    entry["replica_port"] = replica
                serial: dict[str, list[dict]] = {name: [] for name in targets}
                for _ in range(2):  # interleaved
                    for name, target in targets.items():
                        serial[name].append(serial_latency(target, args.serial))
                entry["serial"] = {name: {"p50_ms": _mean(rows, "p50_ms"), "p99_ms": _mean(rows, "p99_ms")}
                                   for name, rows in serial.items()}
                entry["serial"]["ratio_p50"] = round(entry["serial"]["serve"]["p50_ms"]
                                                     / entry["serial"]["uvicorn"]["p50_ms"], 3)
                print(f"    1 client serial: p50 uvicorn {entry['serial']['uvicorn']['p50_ms']:.1f} ms, serve "
                      f"{entry['serial']['serve']['p50_ms']:.1f} ms ({entry['serial']['ratio_p50']:.2f}x)", flush=True)
                for users in args.users:
                    entry[f"u{users}"] = compare(targets, users, args, tmp, mode.replace("+", "_"))
                    side = entry[f"u{users}"]["serve"]
                    print(f"  {mode} at {users} users: p50 {side['ratio_p50']:.2f}x  p99 {side['ratio_p99']:.2f}x  "
                          f"req/s {side['ratio_rps']:.2f}x of uvicorn -> target "
                          f"{'met' if side['target_met'] else 'NOT met'}", flush=True)
                entry["target_met"] = all(entry[f"u{u}"]["serve"]["target_met"] for u in args.users)
                entry["loadavg"] = load_avg()
            finally:
                stop_serve_mode(proc)
            results[mode] = entry
    finally:
        uvicorn.terminate()
        try:
            uvicorn.wait(10)
        except subprocess.TimeoutExpired:
            uvicorn.kill()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=DEFAULT_MODES,
                        help=f"comma-separated, of {', '.join(MODES)} (default {DEFAULT_MODES}; 'all': every one)")
    parser.add_argument("--users", default="10,50", help="comma-separated locust user counts")
    parser.add_argument("--duration", type=int, default=8, help="seconds per locust run")
    parser.add_argument("--rounds", type=int, default=1, help="locust runs per target, mode and user count")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds each locust user waits between requests")
    parser.add_argument("--serial", type=int, default=50, help="sequential requests per target (x2, interleaved)")
    parser.add_argument("--projects", type=int, default=5, help="projects created before the latency runs")
    parser.add_argument("--cold-start", action="store_true",
                        help="also part A: cold start and idle memory, bare Serve app vs AI Studio (~1 min)")
    parser.add_argument("--settle", type=float, default=8.0, help="idle seconds before measuring memory (part A)")
    args = parser.parse_args(argv)
    if args.modes == "all":
        args.modes = ",".join(MODES)
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    args.users = [int(u) for u in args.users.split(",")]

    from appliance.config import Settings

    before = machine()
    print(f"machine before: {before}", flush=True)
    result: dict = {"machine_before": before, "users": args.users, "duration_s": args.duration,
                    "rounds": args.rounds, "target": {"p50_ratio_max": TARGET_P50, "rps_ratio_min": TARGET_RPS}}
    with tempfile.TemporaryDirectory(prefix="serve_overhead_") as tmp:
        tmp = Path(tmp)
        (tmp / "imports").mkdir()
        settings = Settings(workspace=tmp / "ws", import_roots=[tmp / "imports"], port=free_port(),
                            ray_dashboard_port=free_port(), api_token=None)
        if args.cold_start:
            result.update(cold_start(settings, args))
        # ---- B. latency: each serve mode (its own appliance process) vs plain uvicorn, same app and workspace
        result["modes"] = latency_by_mode(settings, args, tmp)
    print("summary (ratios of plain uvicorn, measured beside it):", flush=True)
    for mode, entry in result["modes"].items():
        parts = [f"{u} users p50 {entry[f'u{u}']['serve']['ratio_p50']:.2f}x rps {entry[f'u{u}']['serve']['ratio_rps']:.2f}x"
                 for u in args.users]
        print(f"  {mode:>20}: " + "; ".join(parts) + f" -> {'met' if entry['target_met'] else 'NOT met'}", flush=True)
    result["best_mode"] = min(result["modes"], key=lambda m: sum(
        result["modes"][m][f"u{u}"]["serve"]["ratio_p50"] / result["modes"][m][f"u{u}"]["serve"]["ratio_rps"]
        for u in args.users))
    result["machine_after"] = machine()
    print(f"machine after: {result['machine_after']}", flush=True)
    emit_json("serve_overhead", **result)


def cold_start(settings, args) -> dict:
    """Part A, in this process: bare Ray + an empty Serve app, then AI Studio (default serve mode)."""
    import ray  # noqa: F401  (imports are not part of the cold start)
    from ray import serve  # noqa: F401

    import appliance.serve  # noqa: F401

    print("starting bare Ray + empty Serve app ...", flush=True)
    bare, stop_bare = start_bare()
    bare["memory"] = idle_memory(args.settle)
    stop_bare()
    wait_children_gone()
    print("starting AI Studio ...", flush=True)
    ours, stop_ours, _url = start_aistudio(settings)
    try:
        ours["memory"] = idle_memory(args.settle)
    finally:
        stop_ours()
    wait_children_gone()
    ratios = {
        "cold_start": round(ours["cold_start_s"] / bare["cold_start_s"], 3),
        "serve_to_healthy": round(ours["serve_to_healthy_s"] / bare["serve_to_healthy_s"], 3),
        "idle_pss": round(ours["memory"]["pss_bytes"] / bare["memory"]["pss_bytes"], 3),
        "idle_rss": round(ours["memory"]["rss_bytes"] / bare["memory"]["rss_bytes"], 3),
    }
    for name, side in (("bare Ray + empty Serve", bare), ("AI Studio", ours)):
        mem = side["memory"]
        print(f"{name:>24}: cold start {side['cold_start_s']:.1f} s (ray.init {side['ray_init_s']:.1f} s "
              f"+ serve {side['serve_to_healthy_s']:.1f} s); idle PSS {gib(mem['pss_bytes'])}, "
              f"RSS {gib(mem['rss_bytes'])} over {mem['processes']} processes "
              f"(driver PSS {gib(mem['driver_pss_bytes'])})", flush=True)
    print(f"{'ratio aistudio/bare':>24}: cold start {ratios['cold_start']:.2f}x, serve part "
          f"{ratios['serve_to_healthy']:.2f}x, idle PSS {ratios['idle_pss']:.2f}x, idle RSS {ratios['idle_rss']:.2f}x",
          flush=True)
    return {"bare": bare, "aistudio": ours, "ratios": ratios}


if __name__ == "__main__":
    main()
