"""GET /api/projects latency with 0 and with 200 open live training streams, through Serve (issue #12 item 9).

Starts AI Studio (real Ray + Serve, temp workspace, AISTUDIO_MAX_SSE_STREAMS raised above the stream
count), creates a few projects and a `running`, heart-beating experiment row, then measures one client
calling `GET /api/projects` in series:
  A1  with no stream open;
  B   with `--streams` SSE streams open on the running experiment (asyncio + httpx in a thread), while
      the bus gets a `log` event every `--publish-every` s (2) (as a training run's log lines), so the
      streams have something to deliver;
  A2  with the streams closed again.
The baseline is A1 + A2 (measured in the same run, around B). Reports p50/p99 of each and the ratio
B / baseline (issue target: ≤ 2×), plus how many streams were open and how many events each got.

    python benchmarks/sse_load.py                        # 200 streams, 300 requests per phase
    python benchmarks/sse_load.py --streams 100 --requests 500

Ends with one JSON line (`{"benchmark": "sse_load", ...}`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    emit_json, finish_experiment, free_port, machine, make_running_experiment, percentile, ray_init,
)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def heartbeat_loop(db_url: str, exp_id: str, stop: threading.Event) -> None:
    from appliance.store.runs import HEARTBEAT_EVERY_S, heartbeat

    while not stop.wait(HEARTBEAT_EVERY_S):
        heartbeat(db_url, exp_id)


class Streams(threading.Thread):
    """`n` SSE streams held open by one asyncio loop; counts the events each receives."""

    def __init__(self, url: str, n: int):
        super().__init__(daemon=True)
        self.url, self.n = url, n
        self.opened, self.statuses, self.events = 0, [], [0] * n
        self.all_open = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.n + 10, max_keepalive_connections=self.n + 10)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None), limits=limits) as client:
            tasks = [asyncio.create_task(self._one(client, i)) for i in range(self.n)]
            while not self._halt.is_set():
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, client, i: int) -> None:
        async with client.stream("GET", self.url) as resp:
            self.statuses.append(resp.status_code)
            first = True
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    self.events[i] += 1
                    if first:
                        first = False
                        self.opened += 1
                        if self.opened == self.n:
                            self.all_open.set()

    def stop(self) -> None:
        self._halt.set()


def measure(http, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = http.get("/api/projects")
        times.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    return times


def summary(times: list[float]) -> dict:
    return {"n": len(times), "p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300, help="GET /api/projects calls per phase")
    parser.add_argument("--projects", type=int, default=5)
    parser.add_argument("--publish-every", type=float, default=2.0, help="seconds between bus log events in B (0: none)")
    args = parser.parse_args(argv)

    import httpx
    import ray

    from appliance.config import Settings
    from appliance.config import settings_env
    from appliance.runtime import APP_NAME, start_appliance, stop_appliance

    before = machine()
    print(f"machine before: {before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sse_load_") as tmp:
        tmp = Path(tmp)
        (tmp / "imports").mkdir()
        settings = Settings(workspace=tmp / "ws", import_roots=[tmp / "imports"], port=free_port(),
                            ray_dashboard_port=free_port(), api_token=None, max_sse_streams=args.streams + 50)
        ray_init(settings.ray_dashboard_port, APP_NAME, settings_env(settings))
        url = start_appliance(settings, wait_healthy_s=180)
        print(f"AI Studio healthy at {url}", flush=True)
        stop_beat, stop_publish = threading.Event(), threading.Event()
        try:
            from ray_jobs.events import get_event_bus

            with httpx.Client(base_url=url, timeout=60) as http:
                ids = [http.post("/api/projects", json={"name": f"bench-{i}", "task": "classification"}).json()["data"]["id"]
                       for i in range(args.projects)]
                exp_id = make_running_experiment(settings.db_url, ids[0], name="sse-load")
                threading.Thread(target=heartbeat_loop, args=(settings.db_url, exp_id, stop_beat), daemon=True).start()
                bus = get_event_bus()
                measure(http, 20)  # warm-up
                a1 = measure(http, args.requests)
                print(f"A1 (0 streams): {summary(a1)}", flush=True)

                streams = Streams(f"{url}/api/training/{ids[0]}/experiments/{exp_id}/stream", args.streams)
                streams.start()
                if not streams.all_open.wait(180):
                    raise SystemExit(f"only {streams.opened}/{args.streams} streams opened; statuses "
                                     f"{sorted(set(streams.statuses))}")

                def publish() -> None:
                    n = 0
                    while not stop_publish.wait(args.publish_every):
                        n += 1
                        bus.publish.remote(exp_id, "log", {"line": f"log line {n}"})

                if args.publish_every > 0:  # 0: idle streams (keep-alives only)
                    threading.Thread(target=publish, daemon=True).start()
                time.sleep(2)
                b = measure(http, args.requests)
                stop_publish.set()
                print(f"B ({streams.opened} streams open): {summary(b)}", flush=True)
                events = sorted(streams.events)
                streams.stop()
                streams.join(30)
                time.sleep(2)
                a2 = measure(http, args.requests)
                print(f"A2 (streams closed): {summary(a2)}", flush=True)
                finish_experiment(settings.db_url, exp_id)
                ray.get(bus.publish.remote(exp_id, "complete", {"status": "completed"}))
        finally:
            stop_beat.set()
            stop_publish.set()
            stop_appliance(settings)

    base = a1 + a2
    figures = {
        "streams": args.streams, "streams_open": streams.opened, "publish_every_s": args.publish_every, "requests_per_phase": args.requests,
        "baseline": summary(base), "a1": summary(a1), "a2": summary(a2), "with_streams": summary(b),
        "events_per_stream_min": events[0], "events_per_stream_max": events[-1],
    }
    figures["ratio_p50"] = round(figures["with_streams"]["p50_ms"] / figures["baseline"]["p50_ms"], 2)
    figures["ratio_p99"] = round(figures["with_streams"]["p99_ms"] / figures["baseline"]["p99_ms"], 2)
    figures["target_ratio"] = 2.0
    figures["meets_target"] = figures["ratio_p99"] <= 2.0
    after = machine()
    print(f"GET /api/projects with {streams.opened} open streams vs none: p50 ×{figures['ratio_p50']}, "
          f"p99 ×{figures['ratio_p99']} (target ≤ 2×: {'met' if figures['meets_target'] else 'NOT met'})")
    print(f"machine after: {after}", flush=True)
    emit_json("sse_load", machine_before=before, machine_after=after, **figures)


if __name__ == "__main__":
    main()
