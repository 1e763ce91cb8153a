"""What Ray Serve costs AI Studio: cold start, idle memory and API latency (issue 2).

Part A: cold start and idle memory. In one process, one after the other (Ray shut down in between):

  bare      ray.init (dashboard on, as the appliance does) + serve.start + an empty Serve app
            (a `num_cpus=0` @serve.deployment FastAPI ingress with one route);
  aistudio  the same ray.init + `appliance.runtime.start_appliance` (the AI Studio ingress, which
            also creates the event-bus actor).

Each is timed from ray.init to the first 200 of its health route (polled every 0.5 s, as
start_appliance does; Ray's worker logs are not forwarded to this driver on either side);
after `--settle` s idle, RSS and PSS are summed over that Ray session's
processes (descendants of this process or command lines naming the session directory, so other
Ray clusters on the host are left out; the driver is reported apart).

Part B: API latency. With AI Studio still up and a few projects in its workspace, the same
FastAPI app (`appliance.main:create_app`, same settings via AISTUDIO_* env vars, same SQLite)
is also started under plain uvicorn in a subprocess. Locust (headless, FastHttpUser, `--users`
users, no wait) GETs /api/projects on each for `--duration` s, alternating targets for
`--rounds` rounds; p50/p99/rps come from locust's `--csv` output. Before that, one client sends
`--serial` requests at a time to each (interleaved, twice): the unloaded latency.

    python benchmarks/serve_overhead.py                 # ~2.5-3 min on 2 cores
    python benchmarks/serve_overhead.py --duration 30 --rounds 1 --users 10

Prints both sides, the ratios (aistudio/bare, serve/uvicorn) and a JSON line
(`{"benchmark": "serve_overhead", ...}`). On a shared host only the ratios mean much.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO, emit_json, free_port, gib, machine, percentile, ray_init, ray_processes_memory, ray_session_dir, wait_http,
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
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", host,
           "-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=duration_s + 90)
    rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))
    agg = next((r for r in rows if r["Name"] == "Aggregated"), None)
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

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=8.0, help="idle seconds before measuring memory")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--duration", type=int, default=15, help="seconds per locust run")
    parser.add_argument("--rounds", type=int, default=2, help="locust rounds (each: uvicorn and Serve, alternating)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds each locust user waits between requests")
    parser.add_argument("--serial", type=int, default=100, help="sequential requests per target (x2, interleaved)")
    parser.add_argument("--projects", type=int, default=5, help="projects created before the latency runs")
    parser.add_argument("--skip-latency", action="store_true", help="only part A")
    args = parser.parse_args(argv)

    import ray  # noqa: F401  (imports are not part of the cold start)
    from ray import serve  # noqa: F401

    from appliance.config import Settings
    import appliance.serve  # noqa: F401

    before = machine()
    print(f"machine before: {before}", flush=True)
    result: dict = {"machine_before": before, "users": args.users, "duration_s": args.duration,
                    "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="serve_overhead_") as tmp:
        tmp = Path(tmp)
        (tmp / "imports").mkdir()
        settings = Settings(workspace=tmp / "ws", import_roots=[tmp / "imports"], port=free_port(),
                            ray_dashboard_port=free_port(), api_token=None)

        # ---- A. bare Ray + empty Serve app, then AI Studio
        print("starting bare Ray + empty Serve app ...", flush=True)
        bare, stop_bare = start_bare()
        bare["memory"] = idle_memory(args.settle)
        stop_bare()
        wait_children_gone()

        print("starting AI Studio ...", flush=True)
        ours, stop_ours, url = start_aistudio(settings)
        ours["memory"] = idle_memory(args.settle)
        result["bare"], result["aistudio"] = bare, ours
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
        top = list(ours["memory"]["pss_by_process_bytes"].items())[:6]
        print("   AI Studio PSS by process: " + ", ".join(f"{k} {v / 1024**2:.0f} MiB" for k, v in top), flush=True)

        # ---- B. latency: Serve vs plain uvicorn, same app and workspace
        uvicorn = None
        try:
            if not args.skip_latency:
                import httpx

                with httpx.Client(base_url=url, timeout=30) as http:
                    for i in range(args.projects):
                        http.post("/api/projects", json={"name": f"bench-{i}", "task": "classification"}).raise_for_status()
                uv_port = free_port()
                uvicorn = start_uvicorn(settings, uv_port)
                targets = {"serve": url, "uvicorn": f"http://127.0.0.1:{uv_port}"}
                serial: dict[str, list[dict]] = {"serve": [], "uvicorn": []}
                for _ in range(2):  # interleaved
                    for name, target in targets.items():
                        serial[name].append(serial_latency(target, args.serial))
                serial = {name: {"p50_ms": _mean(rows, "p50_ms"), "p99_ms": _mean(rows, "p99_ms")}
                          for name, rows in serial.items()}
                serial["ratio_serve_over_uvicorn_p50"] = round(serial["serve"]["p50_ms"] / serial["uvicorn"]["p50_ms"], 3)
                result["serial_latency"] = serial
                print(f"{'one client, serial':>24}: p50 uvicorn {serial['uvicorn']['p50_ms']:.1f} ms, serve "
                      f"{serial['serve']['p50_ms']:.1f} ms ({serial['ratio_serve_over_uvicorn_p50']:.2f}x); p99 "
                      f"uvicorn {serial['uvicorn']['p99_ms']:.1f} ms, serve {serial['serve']['p99_ms']:.1f} ms",
                      flush=True)
                runs: dict[str, list[dict]] = {"serve": [], "uvicorn": []}
                for r in range(args.rounds):
                    order = ("uvicorn", "serve") if r % 2 == 0 else ("serve", "uvicorn")
                    for name in order:
                        row = run_locust(targets[name], args.users, args.duration, args.wait, tmp, f"{name}{r}")
                        runs[name].append(row)
                        print(f"  round {r + 1} {name:>7}: p50 {row['p50_ms']:.0f} ms  p99 {row['p99_ms']:.0f} ms  "
                              f"{row['rps']:.0f} req/s  ({row['requests']} requests, {row['failures']} failed)",
                              flush=True)
                latency = {name: {"runs": rows, "p50_ms": _mean(rows, "p50_ms"), "p99_ms": _mean(rows, "p99_ms"),
                                  "rps": _mean(rows, "rps"), "failures": sum(x["failures"] for x in rows)}
                           for name, rows in runs.items()}
                latency["ratio_serve_over_uvicorn"] = {
                    key: round(latency["serve"][key] / latency["uvicorn"][key], 3) for key in ("p50_ms", "p99_ms", "rps")
                }
                result["latency"] = latency
                for name in ("uvicorn", "serve"):
                    side = latency[name]
                    print(f"{'GET /api/projects ' + name:>24}: p50 {side['p50_ms']:.0f} ms  p99 {side['p99_ms']:.0f} ms  "
                          f"{side['rps']:.0f} req/s (mean of {args.rounds} runs, {args.users} users)", flush=True)
                lr = latency["ratio_serve_over_uvicorn"]
                print(f"{'ratio serve/uvicorn':>24}: p50 {lr['p50_ms']:.2f}x  p99 {lr['p99_ms']:.2f}x  "
                      f"req/s {lr['rps']:.2f}x", flush=True)
        finally:
            if uvicorn is not None:
                uvicorn.terminate()
                try:
                    uvicorn.wait(10)
                except subprocess.TimeoutExpired:
                    uvicorn.kill()
            stop_ours()
    result["ratios"] = ratios
    result["machine_after"] = machine()
    print(f"machine after: {result['machine_after']}", flush=True)
    emit_json("serve_overhead", **result)


if __name__ == "__main__":
    main()
