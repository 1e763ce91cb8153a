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


WAITING_FOR_GPU = "Waiting for a GPU share"
WAITING_FOR_CPU = "Waiting for a free CPU"


def waiting(job_id: str) -> str | None:
    """What the task doing `job_id` waits for, as Ray's scheduler reports it (State API): while the
    task is pending a node (`PENDING_NODE_ASSIGNMENT`: no node has the resources it asks for free),
    `WAITING_FOR_GPU` when it asks for a GPU share and the cluster has less free than that, else
    `WAITING_FOR_CPU`. None when no task of this process does the job, it is placed, or Ray cannot say
    (task events reach Ray's State API about a second late)."""
    with _lock:
        ref = _running.get(job_id)
    if ref is None:
        return None
    try:
        import ray
        from ray.util.state import get_task

        task = get_task(ref.task_id().hex(), address=ray.get_runtime_context().gcs_address, timeout=5)
        if isinstance(task, list):  # one entry per attempt
            task = task[-1] if task else None
        if task is None or str(getattr(task.state, "value", task.state)) != "PENDING_NODE_ASSIGNMENT":
            return None
        gpu = float((task.required_resources or {}).get("GPU", 0))
        if gpu > 0 and ray.available_resources().get("GPU", 0) < gpu:
            return WAITING_FOR_GPU
        return WAITING_FOR_CPU
    except Exception:  # the State API is best effort here: the record's status stays the truth
        return None
