"""The one job runner: named lanes of worker threads inside the ingress process.

The work itself either runs here (imports) or waits on Ray (evaluation tasks, exports,
training jobs). A job's state lives in its database record, never only in memory: services
re-submit queued records and fail cut-off ones at start-up (their `recover` functions).
Lane sizes encode the concurrency rules: exports one at a time (a queue), evaluations several.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("aistudio.jobs")

LANES = {"import": 1, "export": 1, "evaluation": 4, "training": 1, "watch": 1, "weights": 1, "deploy": 2}


class JobRunner:
    def __init__(self, lanes: dict[str, int] | None = None):
        self._pools = {
            name: ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"job-{name}")
            for name, size in (lanes or LANES).items()
        }

    def submit(self, lane: str, fn: Callable, *args) -> Future:
        return self._pools[lane].submit(self._guard, lane, fn, *args)

    @staticmethod
    def _guard(lane: str, fn: Callable, *args):
        try:
            return fn(*args)
        except Exception:  # the job function records its own failure; this is the last resort log
            log.exception("Job in lane %s failed: %s%r", lane, getattr(fn, "__name__", fn), args)
            return None

    def shutdown(self, wait: bool = False) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)
