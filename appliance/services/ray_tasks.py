"""Handles of the Ray tasks this ingress is waiting on, so a forced delete can cancel them.

The database record stays the truth about a job; a handle is only the means to end a live task
early. It lives as long as the runner thread that waits on the task (on embedded Ray the task
dies with the process anyway; on a cluster, start-up recovery fails the record).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_running: dict[str, object] = {}


@contextmanager
def tracked(job_id: str, ref) -> Iterator[None]:
    """Remember `ref` as the task doing `job_id` while the caller waits on it."""
    with _lock:
        _running[job_id] = ref
    try:
        yield
    finally:
        with _lock:
            if _running.get(job_id) is ref:
                del _running[job_id]


def cancel(job_id: str) -> bool:
    """Kill the task doing `job_id` (with the actors it owns, e.g. a Train controller and its
    workers); the waiting runner thread then records the job's end. False when none is known."""
    import ray

    with _lock:
        ref = _running.get(job_id)
    if ref is None:
        return False
    ray.cancel(ref, force=True, recursive=True)
    return True
