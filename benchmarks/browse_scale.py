"""Browsing at size (issue #14 item 2): list pages + thumbnails under locust, 10k vs 100k images.

For each size N: N tiny, all-different JPEGs (random noise, 10 classes) are generated and imported
through the real appliance (Ray Serve ingress, local-path import, the import worker). Then locust
headless (FastHttpUser, no wait) runs "page views" against each project: one image-list page of 48
(`GET /api/datasets/{p}/images?limit=48&cursor=…`, each user walking the whole dataset with the
keyset cursor, wrapping at the end) + 8 thumbnails of that page. The baseline, measured in the same
run and interleaved with the projects: the same shape of page view (9 requests) on a small static
file (`GET /static/favicon.svg`, Starlette's StaticFiles) through the same ingress — the floor any
route pays. Reports, per size and user count: list
p50/p99, thumbnail p50/p99, req/s, errors, and the ratios to the baseline; the cost should not grow
with N (compare the sizes' rows).

    python benchmarks/browse_scale.py                         # --sizes 2000 10000, 20 s runs (~4 min)
    python benchmarks/browse_scale.py --sizes 10000 100000 --workspace /data/browse-ws
    python benchmarks/browse_scale.py --import-only --sizes 100000 --workspace /data/browse-ws

`--workspace DIR` keeps the workspace: a project `browse-N` already holding N images is reused (the
import is the slow part at 100k), so `--import-only` can run first and the load later. Without it a
temporary workspace is used and removed. The targets (issue #14): list p99 < 100 ms, thumbnail p99
< 50 ms at 100k images and 50 users, 0 errors. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, free_port, load_avg, machine, ray_init, run_locust_headless  # noqa: E402

CLASSES = 10
LOCUSTFILE = '''
import random
from locust import FastHttpUser, task

class Browse(FastHttpUser):
    target = "{target}"  # "static" or a project id
    connection_timeout = 60.0
    network_timeout = 60.0

    def on_start(self):
        self.cursor = None

    @task
    def page_view(self):
        if self.target == "static":
            self.client.get("/static/favicon.svg", name="list")
            for _ in range(8):
                self.client.get("/static/favicon.svg", name="thumb")
            return
        url = f"/api/datasets/{{self.target}}/images?limit=48"
        if self.cursor:
            url += f"&cursor={{self.cursor}}"
        with self.client.get(url, name="list", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"list {{resp.status_code}}")
                self.cursor = None
                return
            page = resp.json()["data"]
        self.cursor = page.get("next_cursor")
        items = page["items"]
        for item in random.sample(items, min(8, len(items))):
            self.client.get(item["thumbnail_url"], name="thumb")
'''


def make_images(folder: Path, n: int, seed: int) -> None:
    """n tiny JPEGs (64x48 random noise, so every one differs), spread over CLASSES folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = int(rng.integers(48, 97)), int(rng.integers(36, 73))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"class{i % CLASSES}" / f"img{i:07d}.jpg", quality=70)


def ensure_project(http, imports: Path, n: int) -> str:
    """The project `browse-N` holding N images: reused, else generated and imported now."""
    name = f"browse-{n}"
    listed = http.get("/api/projects", params={"limit": 500}).json()["data"]
    for p in listed["items"] if isinstance(listed, dict) else listed:
        if p["name"] == name:
            total = http.get(f"/api/datasets/{p['id']}/images?limit=1").json()["data"]["total"]
            if total == n:
                print(f"{name}: reusing the project ({total} images)", flush=True)
                return p["id"]
    folder = imports / name
    if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != n:
        shutil.rmtree(folder, ignore_errors=True)
        start = time.monotonic()
        make_images(folder, n, seed=n)
        print(f"{name}: {n} JPEGs generated in {time.monotonic() - start:.0f} s", flush=True)
    pid = http.post("/api/projects", json={"name": name, "task": "classification"}).json()["data"]["id"]
    start = time.monotonic()
    job = http.post("/api/datasets/import/local",
                    json={"project_id": pid, "source_path": str(folder), "format": "folder"}).json()["data"]
    last = 0.0
    while job["status"] in ("queued", "running"):
        time.sleep(2)
        job = http.get(f"/api/datasets/{pid}/imports/{job['id']}").json()["data"]
        if time.monotonic() - last > 30:
            last = time.monotonic()
            print(f"{name}: importing {job['done']}/{job['total']} ({time.monotonic() - start:.0f} s)", flush=True)
    if job["status"] != "completed" or job["added"] != n:
        raise RuntimeError(f"{name}: import ended {job['status']} with {job['added']} added: {job.get('error')}")
    print(f"{name}: imported {n} images in {time.monotonic() - start:.0f} s", flush=True)
    return pid


def run_locust(host: str, target: str, users: int, duration_s: int, workdir: Path, tag: str) -> dict:
    locustfile = workdir / f"locust_{tag}.py"
    locustfile.write_text(LOCUSTFILE.format(target=target))
    prefix = workdir / tag
    proc = run_locust_headless(locustfile, host, users, duration_s, prefix, stop_timeout_s=10, slack_s=120)
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    agg = rows.get("Aggregated")
    if agg is None or int(agg["Request Count"]) == 0:
        raise RuntimeError(f"locust produced no requests ({tag}): rc={proc.returncode}\n{proc.stderr[-2000:]}")
    out = {"requests": int(agg["Request Count"]), "errors": int(agg["Failure Count"]),
           "rps": round(float(agg["Requests/s"]), 1)}
    for name in ("list", "thumb"):
        r = rows.get(name)
        if r:
            out[f"{name}_p50_ms"] = float(r["50%"])
            out[f"{name}_p99_ms"] = float(r["99%"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--users", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--duration", type=int, default=20, help="seconds per locust run")
    parser.add_argument("--workspace", type=Path, help="keep the workspace here (reuse imported projects)")
    parser.add_argument("--import-only", action="store_true", help="import the sizes, skip the load")
    args = parser.parse_args(argv)

    import httpx

    from appliance.config import Settings, settings_env
    from appliance.runtime import APP_NAME, start_appliance, stop_appliance

    temp = None
    root = args.workspace
    if root is None:
        root = Path(temp := tempfile.mkdtemp(prefix="browse-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    imports = root / "imports"
    imports.mkdir(exist_ok=True)
    load_before = load_avg()
    settings = Settings(workspace=root / "ws", import_roots=[imports], port=free_port(), ray_dashboard_port=0)
    ray_init(settings.ray_dashboard_port, APP_NAME, settings_env(settings))
    url = start_appliance(settings, wait_healthy_s=180)
    print(f"appliance at {url}; machine {machine()}", flush=True)
    results: dict = {"baseline": {}, "sizes": {}}
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            projects = {n: ensure_project(http, imports, n) for n in args.sizes}
        if not args.import_only:
            work = root / "locust"
            work.mkdir(exist_ok=True)
            for users in args.users:  # interleaved: baseline, then each size, at this user count
                base = run_locust(url, "static", users, args.duration, work, f"static_u{users}")
                results["baseline"][users] = base
                print(f"baseline /static/favicon.svg u={users}: {base}", flush=True)
                for n, pid in projects.items():
                    r = run_locust(url, pid, users, args.duration, work, f"n{n}_u{users}")
                    r["list_p99_over_baseline"] = round(r["list_p99_ms"] / max(base["list_p99_ms"], 1), 2)
                    r["thumb_p99_over_baseline"] = round(r["thumb_p99_ms"] / max(base["thumb_p99_ms"], 1), 2)
                    results["sizes"].setdefault(n, {})[users] = r
                    print(f"N={n} u={users}: {r}", flush=True)
    finally:
        stop_appliance(settings)
        import ray

        ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    largest = max(args.sizes)
    top = results["sizes"].get(largest, {}).get(max(args.users)) if not args.import_only else None
    targets = None
    if top:
        targets = {"list_p99_lt_100ms": top["list_p99_ms"] < 100, "thumb_p99_lt_50ms": top["thumb_p99_ms"] < 50,
                   "zero_errors": all(r["errors"] == 0 for s in results["sizes"].values() for r in s.values())}
        print(f"targets at N={largest}, {max(args.users)} users: {targets}", flush=True)
    print(f"load average before {load_before}, after {load_avg()}", flush=True)
    emit_json("browse_scale", sizes=args.sizes, users=args.users, duration_s=args.duration, results=results,
              targets=targets, loadavg_before=load_before, loadavg_after=load_avg(), machine=machine())


if __name__ == "__main__":
    main()
