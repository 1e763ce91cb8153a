"""Helpers shared by the benchmarks: ports, percentiles, load, JSON lines, memory of Ray's processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    return {"cpus": os.cpu_count(), "loadavg": load_avg(), "python": sys.version.split()[0]}


def run_locust_headless(locustfile: Path, host: str, users: int, duration_s: int, prefix: Path,
                        stop_timeout_s: int = 5, slack_s: int = 120) -> subprocess.CompletedProcess:
    """Locust without its UI: `users` users spawned at once for `duration_s`, stats to `<prefix>_stats.csv`
    (and the other `--csv` files), only the summary printed; run from the locustfile's folder."""
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", host,
           "-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING", "--stop-timeout", str(stop_timeout_s)]
    return subprocess.run(cmd, cwd=locustfile.parent, capture_output=True, text=True, timeout=duration_s + slack_s)


def emit_json(benchmark: str, **payload) -> None:
    """The machine-readable last line every benchmark prints."""
    print(json.dumps({"benchmark": benchmark, **payload}, default=str), flush=True)


def wait_http(url: str, timeout_s: float = 120.0, every_s: float = 0.1) -> float:
    """Poll `url` until it answers 200; return the seconds it took."""
    import urllib.request

    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except Exception:
            pass
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(every_s)


def ray_init(dashboard_port: int, namespace: str, env_vars: dict | None = None, log_to_driver: bool = False) -> float:
    """ray.init as `appliance.runtime.start_appliance` does it (local Ray, dashboard on); returns
    the seconds it took. Workers' logs stay in the session's log files unless `log_to_driver`."""
    import ray

    start = time.monotonic()
    ray.init(
        namespace=namespace, include_dashboard=True, dashboard_port=dashboard_port, dashboard_host="127.0.0.1",
        runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=log_to_driver,
    )
    return time.monotonic() - start


def ray_session_dir() -> str | None:
    try:
        import ray

        return ray._private.worker._global_node.get_session_dir_path()  # noqa: SLF001
    except Exception:
        return None


def ray_processes_memory(session_dir: str | None = None, include_self: bool = False) -> dict:
    """RSS and PSS (bytes) summed over this session's Ray processes.

    A process counts when it descends from this one (ray.init starts GCS, raylet, dashboard, …;
    the raylet starts the workers, Serve's controller, proxy and replicas) or when its command
    line names this session's directory (anything re-parented). Matching on the session rather
    than on "ray" in the command line leaves out other Ray clusters running on the same host.
    The driver (this process) is reported apart and only added to the totals with `include_self`.
    """
    import psutil

    me = psutil.Process()
    procs: dict[int, psutil.Process] = {p.pid: p for p in me.children(recursive=True)}
    if session_dir:
        session_name = os.path.basename(session_dir.rstrip("/"))
        for p in psutil.process_iter(["cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or ())
            except (psutil.Error, TypeError):
                continue
            if session_name in cmd and p.pid != me.pid:
                procs.setdefault(p.pid, p)
    rows = []
    for p in procs.values():
        try:
            info = p.memory_full_info()
            rows.append({"pid": p.pid, "name": _short_name(p), "rss": info.rss, "pss": getattr(info, "pss", info.rss)})
        except psutil.Error:
            continue
    driver = me.memory_full_info()
    driver_row = {"rss": driver.rss, "pss": getattr(driver, "pss", driver.rss)}
    total_rss = sum(r["rss"] for r in rows) + (driver_row["rss"] if include_self else 0)
    total_pss = sum(r["pss"] for r in rows) + (driver_row["pss"] if include_self else 0)
    by_name: dict[str, int] = {}
    for r in rows:
        by_name[r["name"]] = by_name.get(r["name"], 0) + r["pss"]
    return {
        "processes": len(rows),
        "rss_bytes": total_rss,
        "pss_bytes": total_pss,
        "driver_rss_bytes": driver_row["rss"],
        "driver_pss_bytes": driver_row["pss"],
        "pss_by_process_bytes": dict(sorted(by_name.items(), key=lambda kv: -kv[1])),
    }


def _short_name(p) -> str:
    """A readable label: Ray sets worker titles like `ray::ServeController`; else the executable."""
    try:
        cmd = p.cmdline()
    except Exception:
        cmd = []
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if cmd:
        for part in cmd[:3]:
            base = os.path.basename(part)
            if base.endswith(".py"):
                return base
        return os.path.basename(cmd[0])
    try:
        return p.name()
    except Exception:
        return "?"


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def make_running_experiment(db_url: str, project_id: str, name: str = "sse-bench") -> str:
    """An experiment row that says `running` (with a split), for streaming benchmarks: the SSE
    route then polls the event bus for it as it would for a live run."""
    from appliance.store.db import session_scope
    from appliance.store.ids import new_id
    from appliance.store.tables import Experiment, Split, utcnow

    split_id, exp_id = new_id("split"), new_id("experiment")
    with session_scope(db_url) as s:
        s.add(Split(id=split_id, project_id=project_id, name="bench", train=0.8, val=0.2, test=0.0, seed=0,
                    stratified=True, counts={}))
        s.flush()
        s.add(Experiment(id=exp_id, project_id=project_id, split_id=split_id, name=name, model="resnet18",
                         params={"task": "classification", "epochs": 1}, class_names=["a", "b"], status="running",
                         heartbeat_at=utcnow(), started_at=utcnow()))
    return exp_id


def finish_experiment(db_url: str, exp_id: str) -> None:
    from appliance.store.db import session_scope
    from appliance.store.tables import Experiment, utcnow

    with session_scope(db_url) as s:
        exp = s.get(Experiment, exp_id)
        exp.status, exp.finished_at = "completed", utcnow()
