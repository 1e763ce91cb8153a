"""Peak memory of the ingress while 12 clients fetch thumbnails (issue #12, item 2).

Starts AI Studio (real Ray + Serve, temp workspace) with AISTUDIO_MAX_IMAGE_PIXELS raised to
200 MP, so that 13000 x 13000 PNGs (~165 KB each on disk, 169 MP: 169 MB as palette pixels,
507 MB as RGB) get into a dataset. Two projects: `normal` (only ordinary JPEG/PNG images) and
`bombs` (the same plus three distinct 13000² PNGs). For each, two phases:

  eager  thumbnails as the import made them: the requests only read small JPEGs;
  lazy   every thumbnail file deleted first (a dataset imported before thumbnails were made at
         import): the requests make them, two decodes at a time within the pixel budget.

In each phase `--clients` threads (12) fetch every thumbnail of the project in their own
shuffled order, `--rounds` times. Measured on the Serve replica process (found with psutil among
this Ray session's processes): its idle RSS just before the phase (the baseline, same run) and
its peak RSS during the phase — the kernel's high-water mark (VmHWM, reset through
/proc/<pid>/clear_refs before each phase) when writable, else the max of 20 Hz samples.
Reports peak − baseline in MB, and request latency p50/p99.

    python benchmarks/thumbnail_memory.py            # ~3-4 min on 2 shared cores (Ray start-up included)
    python benchmarks/thumbnail_memory.py --normal 40 --bombs 1 --rounds 1

Last line: `{"benchmark": "thumbnail_memory", ...}`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, free_port, machine, percentile  # noqa: E402

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
MB = 1024 * 1024
BOMB_SIDE = 13000


def make_dataset(root: Path, normal: int, bombs: int, seed: int) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    for i in range(normal):
        cls = ("red", "blue")[i % 2]
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        w, h = rng.choice([(640, 480), (1024, 768), (1920, 1080)])
        im = Image.frombytes("RGB", (w // 8, h // 8), rng.randbytes((w // 8) * (h // 8) * 3)).resize((w, h))
        if i % 4 == 3:
            im.save(folder / f"{cls}_{i:03d}.png")
        else:
            im.save(folder / f"{cls}_{i:03d}.jpg", quality=90)
    for k in range(bombs):
        bomb = Image.new("P", (BOMB_SIDE, BOMB_SIDE), 0)
        bomb.putpalette([(40 * k + 30) % 256, 30, 30] * 256)  # distinct bytes: not duplicates
        bomb.save(root / "red" / f"bomb_{k}.png")
    return root


def replica_process():
    """The Serve replica of the ingress among this process's descendants."""
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "ServeReplica" in cmd and "AIStudioIngress" in cmd:
            return p
    raise RuntimeError("no ServeReplica process of AIStudioIngress found")


class PeakRss:
    """Peak RSS of `proc` over a phase: VmHWM (reset first) when possible, plus 20 Hz samples."""

    def __init__(self, proc):
        self.proc = proc
        self.hwm_ok = self._reset_hwm()
        self.sampled = proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _reset_hwm(self) -> bool:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _hwm(self) -> int | None:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.sampled = max(self.sampled, self.proc.memory_info().rss)
            except Exception:
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        hwm = self._hwm() if self.hwm_ok else None
        self.peak = max(self.sampled, hwm or 0)
        self.source = "VmHWM" if hwm and hwm >= self.sampled else "samples"


def fetch_all(url: str, paths: list[str], clients: int, rounds: int) -> tuple[list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(base_url=url, timeout=300) as http:
            for _ in range(rounds):
                order = paths[:]
                rng.shuffle(order)
                for path in order:
                    start = time.perf_counter()
                    r = http.get(path)
                    elapsed = time.perf_counter() - start
                    with lock:
                        latencies.append(elapsed)
                        if r.status_code != 200 or r.headers.get("content-type") != "image/jpeg":
                            errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def settle_rss(proc, seconds: float = 3.0) -> int:
    time.sleep(seconds)
    return proc.memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal", type=int, default=60, help="ordinary images per project")
    parser.add_argument("--bombs", type=int, default=3, help="13000² PNGs in the `bombs` project")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import httpx

    from appliance.config import Settings
    from appliance.runtime import start_appliance, stop_appliance

    print("machine:", machine(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="aistudio-thumbs-"))
    imports = tmp / "imports"
    imports.mkdir()
    started = time.monotonic()
    normal_dir = make_dataset(imports / "normal", args.normal, 0, seed=1)
    bombs_dir = make_dataset(imports / "bombs", args.normal, args.bombs, seed=2)
    print(f"datasets written in {time.monotonic() - started:.1f} s", flush=True)
    if args.bombs:
        print(f"a 13000² bomb is {(bombs_dir / 'red' / 'bomb_0.png').stat().st_size // 1024} KB on disk", flush=True)
    settings = Settings(workspace=tmp / "ws", import_roots=[imports], port=free_port(), ray_dashboard_port=0,
                        api_token=None, max_image_pixels=200_000_000)
    os.environ["SERVE_SOCKET_REUSE_PORT_ENABLED"] = "0"
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        url = start_appliance(settings)
    finally:
        os.chdir(cwd)
    results: dict[str, dict] = {}
    try:
        proc = replica_process()
        print(f"ingress replica pid {proc.pid}, RSS {proc.memory_info().rss / MB:.0f} MB", flush=True)
        http = httpx.Client(base_url=url, timeout=300)
        for name, folder in (("normal", normal_dir), ("bombs", bombs_dir)):
            pid = http.post("/api/projects", json={"name": name, "task": "classification"}).json()["data"]["id"]
            job = http.post("/api/datasets/import/local",
                            json={"project_id": pid, "source_path": str(folder), "format": "folder"}).json()["data"]
            while job["status"] not in ("completed", "failed", "cancelled"):
                time.sleep(0.5)
                job = http.get(f"/api/datasets/{pid}/imports/{job['id']}").json()["data"]
            assert job["status"] == "completed", job
            paths, offset = [], 0
            while True:
                page = http.get(f"/api/datasets/{pid}/images", params={"offset": offset, "limit": 500}).json()["data"]
                paths += [i["thumbnail_url"] for i in page["items"]]
                offset += 500
                if offset >= page["total"]:
                    break
            thumbs = settings.workspace / "projects" / pid / "dataset" / ".thumbs"
            print(f"{name}: {job['added']} images imported ({len(list(thumbs.iterdir()))} thumbnails made at import)",
                  flush=True)
            for phase in ("eager", "lazy"):
                if phase == "lazy":
                    for thumb in thumbs.iterdir():
                        thumb.unlink()
                idle = settle_rss(proc)
                with PeakRss(proc) as peak:
                    t0 = time.monotonic()
                    latencies, errors = fetch_all(url, paths, args.clients, args.rounds)
                    wall = time.monotonic() - t0
                key = f"{name}_{phase}"
                results[key] = {
                    "requests": len(latencies), "errors": errors, "wall_s": round(wall, 2),
                    "idle_rss_mb": round(idle / MB, 1), "peak_rss_mb": round(peak.peak / MB, 1),
                    "growth_mb": round((peak.peak - idle) / MB, 1), "peak_from": peak.source,
                    "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                    "p99_ms": round(percentile(latencies, 99) * 1000, 1),
                }
                print(f"{key:14s} {results[key]}", flush=True)
        http.close()
    finally:
        stop_appliance(settings)
    worst = max(r["growth_mb"] for r in results.values())
    print(f"largest growth of the ingress over its idle RSS: {worst:.0f} MB "
          f"(one 13000² image decoded as RGB would be {BOMB_SIDE * BOMB_SIDE * 3 / MB:.0f} MB)", flush=True)
    emit_json("thumbnail_memory", clients=args.clients, rounds=args.rounds, normal_images=args.normal,
              bombs=args.bombs, max_image_pixels=settings.max_image_pixels, phases=results,
              worst_growth_mb=worst, machine=machine(), total_s=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
