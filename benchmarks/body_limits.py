"""Time to 413 for a 1 GiB body, through Ray Serve (issue 12, item 1).

Starts AI Studio (real Ray + Serve, temp workspace, uploads limited to `--upload-limit-mib`), then
over raw sockets (tests/hostile/rawhttp.py; the client stops sending as soon as an answer arrives):

- baseline: a 1 MiB chunked JSON body that the server reads to the end (answered 422: the name
  is too long) — the time to send 1 MiB and get an answer;
- `POST /api/projects` with 1 GiB, chunked (no Content-Length): time to the 413 and body bytes the
  client had sent by then (the JSON limit is 1 MiB);
- the same with `Content-Length: 1 GiB` declared: answered before any body byte is needed;
- `POST /api/datasets/import/upload` with a 1 GiB chunked multipart body (limit below it): time to
  413, bytes sent, and the RSS growth of Serve's proxy and of the replica meanwhile;
- an upload just under the limit, read to the end (it is not a ZIP: 400 afterwards): time, MB/s and
  the proxy's / replica's RSS growth — Serve 2.60 forwards the body as it arrives, without
  back-pressure, so whatever the replica has not consumed yet waits in the proxy's memory.

    python benchmarks/body_limits.py                    # ~1-2 min (Ray/Serve start-up included)
    python benchmarks/body_limits.py --repeats 5 --upload-limit-mib 128

Ratios: each time to 413 / the 1 MiB baseline. Last line: one JSON (`{"benchmark": "body_limits", ...}`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit_json, free_port, machine, ray_init  # noqa: E402

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
MiB = 1024 * 1024
GiB = 1024 * MiB


class RssPeak:
    """Samples the RSS of this session's Serve proxy and replica every 20 ms while in a `with`."""

    NAMES = {"proxy": "ProxyActor", "replica": "ServeReplica:aistudio:AIStudioIngress"}

    def __init__(self):
        import psutil

        self.procs = {}
        for p in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            for key, needle in self.NAMES.items():
                if cmd.startswith("ray::" + needle):
                    self.procs[key] = p
        self.start = {}
        self.peak = {}

    def _rss(self) -> dict:
        out = {}
        for key, p in self.procs.items():
            try:
                out[key] = p.memory_info().rss
            except Exception:
                pass
        return out

    def __enter__(self):
        self.start = self._rss()
        self.peak = dict(self.start)
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(0.02):
                for k, v in self._rss().items():
                    self.peak[k] = max(self.peak.get(k, 0), v)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def growth_mib(self) -> dict:
        return {k: round((self.peak.get(k, 0) - self.start.get(k, 0)) / MiB, 1) for k in self.procs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--upload-limit-mib", type=int, default=64)
    parser.add_argument("--ray-logs", action="store_true")
    args = parser.parse_args(argv)

    import httpx

    from appliance.config import Settings
    from appliance.config import settings_env
    from appliance.runtime import APP_NAME, start_appliance, stop_appliance
    from tests.hostile.rawhttp import exchange, multipart, pieces

    before = machine()
    print(f"machine before: {before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="body_limits_") as tmp:
        tmp = Path(tmp)
        (tmp / "imports").mkdir()
        upload_limit = args.upload_limit_mib * MiB
        settings = Settings(workspace=tmp / "ws", import_roots=[tmp / "imports"], port=free_port(),
                            ray_dashboard_port=free_port(), api_token=None, max_upload_bytes=upload_limit)
        started = time.monotonic()
        ray_init(settings.ray_dashboard_port, APP_NAME, settings_env(settings), log_to_driver=args.ray_logs)
        url = start_appliance(settings, wait_healthy_s=180)
        print(f"AI Studio healthy after {time.monotonic() - started:.1f} s at {url}", flush=True)
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                pid = http.post("/api/projects", json={"name": "bench", "task": "classification"}).json()["data"]["id"]
            json_headers = {"Content-Type": "application/json"}
            form_headers = {"Content-Type": "multipart/form-data; boundary=b0und"}
            head, tail = multipart("b0und", {"project_id": pid}, "file", "big.zip")

            def one_mib_body() -> list[bytes]:
                filler = MiB - len(b'{"name":"","task":"classification"}')
                return [b'{"name":"' + b"x" * filler + b'","task":"classification"}']

            runs: dict[str, list] = {"baseline_1mib": [], "json_1gib_chunked": [], "json_1gib_declared": [],
                                     "upload_1gib_chunked": []}
            memory: dict[str, dict] = {}
            for _ in range(args.repeats):  # interleaved, so load swings hit every case alike
                r = exchange(url, "POST", "/api/projects", json_headers, one_mib_body(), hold_s=0)
                assert r.status == 422 and r.sent_before_answer == MiB, (r.status, r.body[:200])
                runs["baseline_1mib"].append(r)
                r = exchange(url, "POST", "/api/projects", json_headers, pieces(GiB), hold_s=5)
                assert r.status == 413, (r.status, r.body[:200])
                runs["json_1gib_chunked"].append(r)
                r = exchange(url, "POST", "/api/projects", json_headers, pieces(GiB), length=GiB, hold_s=5)
                assert r.status == 413, (r.status, r.body[:200])
                runs["json_1gib_declared"].append(r)
                with RssPeak() as rss:
                    r = exchange(url, "POST", "/api/datasets/import/upload", form_headers,
                                 [head, *pieces(GiB)], hold_s=5)
                assert r.status == 413, (r.status, r.body[:200])
                runs["upload_1gib_chunked"].append(r)
                memory["upload_1gib_chunked"] = rss.growth_mib()
            # read to the end: an upload just under the limit (then refused: not a ZIP)
            under = upload_limit - MiB
            with RssPeak() as rss:
                r = exchange(url, "POST", "/api/datasets/import/upload", form_headers, [head, *pieces(under), tail],
                             hold_s=0, timeout_s=600)
            if not r.status or r.seconds_to_answer is None:
                raise AssertionError(f"no answer to the upload under the limit: {r}")
            memory["upload_under_limit"] = rss.growth_mib()
            full_read = {"bytes": under, "status": r.status, "seconds": round(r.seconds_to_answer, 3),
                         "mb_per_s": round(under / MiB / r.seconds_to_answer, 1)}
        finally:
            stop_appliance(settings)

    base = statistics.median(x.seconds_to_answer for x in runs["baseline_1mib"])
    figures = {"baseline_1mib_s": round(base, 4)}
    print(f"\nbaseline: 1 MiB JSON body sent and answered in {base * 1000:.1f} ms (median of {args.repeats})")
    for name in ("json_1gib_chunked", "json_1gib_declared", "upload_1gib_chunked"):
        secs = statistics.median(x.seconds_to_answer for x in runs[name])
        sent = statistics.median(x.sent_before_answer for x in runs[name])
        figures[name] = {"time_to_413_s": round(secs, 4), "ratio_to_1mib_baseline": round(secs / base, 2),
                         "bytes_sent_before_413_median": int(sent),
                         "bytes_sent_before_413_max": max(x.sent_before_answer for x in runs[name]),
                         "of_bytes": GiB}
        print(f"{name:22s} 413 after {secs * 1000:8.1f} ms ({secs / base:5.2f}x baseline), "
              f"{sent / MiB:8.1f} MiB of 1024 MiB sent")
    figures["upload_limit_bytes"] = upload_limit
    figures["upload_read_to_the_end"] = full_read
    figures["rss_growth_mib"] = memory
    print(f"upload of {under / MiB:.0f} MiB read to the end: {full_read['seconds']} s, "
          f"{full_read['mb_per_s']} MiB/s, answer {full_read['status']}")
    print(f"RSS growth (MiB) of Serve's proxy / the replica: {memory}")
    after = machine()
    print(f"machine after: {after}")
    emit_json("body_limits", machine_before=before, machine_after=after, repeats=args.repeats, **figures)


if __name__ == "__main__":
    main()
