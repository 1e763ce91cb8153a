"""Start-up reconciliation: every job-like record left queued/running by a previous process is
either picked up again or marked as cut off, and the files it left half-written are removed.
Each capability contributes its own `recover`.

What survives a restart, by kind (the restart tests in tests/recovery/ kill real processes):
- imports: a cut-off one fails ("the dataset is unchanged"), its staged and half-moved files are
  removed; every project's dataset folder loses image files without a row and thumbnails of no
  recorded image; queued ones run again, in order.
- training: a run whose last sign of life predates the current Ray cluster cannot be running in
  it and becomes `interrupted` (resumable) at once; so does one whose driver (the Ray job or task
  recorded with the run) Ray reports ended — on an external cluster too, at start-up and by the
  watcher; the others are watched by their heartbeat.
- evaluations and exports: a cut-off one fails (an export's partial files are removed); queued
  ones run again, in order.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from fastapi import FastAPI

log = logging.getLogger("aistudio")


def recover_all(app: FastAPI) -> None:
    from appliance.services import datasets, deployments, evaluation, export, training

    recoverers = (datasets.recover_imports, training.recover_runs, evaluation.recover_evaluations, export.recover_exports,
                  deployments.recover_deployments)
    for recover in recoverers:
        try:
            recover(app)
        except Exception:
            log.exception("Start-up recovery step %s failed", recover.__name__)


def ray_started_at() -> datetime | None:
    """When the Ray cluster this process is connected to came up (the start of its oldest job, from
    Ray's public State API), or None without Ray. Nothing started before it can be running in it:
    when the appliance started its own Ray, every run of an earlier process is gone."""
    try:
        import ray
        from ray.util.state import list_jobs

        if not ray.is_initialized():
            return None
        jobs = list_jobs(address=_gcs_address(), detail=True, limit=10_000, raise_on_missing_output=False)
        starts = [start for start in (getattr(job, "start_time", None) for job in jobs) if start]
    except Exception:
        log.exception("Could not read the Ray cluster's start time")
        return None
    return datetime.fromtimestamp(min(starts) / 1000, tz=timezone.utc) if starts else None


ALIVE_JOB = ("PENDING", "RUNNING")
ENDED_TASK = ("FINISHED", "FAILED")


def _gcs_address() -> str:
    """The connected cluster's address for the State API (without it, the API looks for a local
    Ray and fails when a host runs more than one)."""
    import ray

    return ray.get_runtime_context().gcs_address


def _name(value) -> str:
    return str(getattr(value, "value", value))  # Ray's status enums, or plain strings


def ray_driver_alive(driver: str) -> bool | None:
    """Ask Ray whether a run's driver (`ray_driver` of the run, recorded by `runs.mark_running`:
    `task:<task id>` for the UI's driver task, `driver:<job id>` for a `ray job submit` entrypoint
    or any other driver process) still runs. True or False as Ray reports it; None when Ray cannot
    say (no Ray, State API unreachable, forgotten)."""
    kind, _, ident = driver.partition(":")
    try:
        import ray
        from ray.util import state

        if not ray.is_initialized() or not ident:
            return None
        address = _gcs_address()
        if kind == "driver":
            jobs = state.list_jobs(address=address, filters=[("job_id", "=", ident)], detail=True,
                                   raise_on_missing_output=False)
            return None if not jobs else _name(jobs[0].status) in ALIVE_JOB
        if kind == "task":
            task = state.get_task(ident, address=address)
            if isinstance(task, list):  # older Ray: one entry per attempt
                task = task[-1] if task else None
            return None if task is None else _name(task.state) not in ENDED_TASK
    except Exception:
        log.warning("Could not ask Ray whether %s is alive", driver, exc_info=True)
    return None
