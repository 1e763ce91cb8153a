"""Start-up reconciliation: every job-like record left queued/running by a previous process is
either picked up again or marked as cut off, and the files it left half-written are removed.
Each capability contributes its own `recover`.

What survives a restart, by kind (the restart tests in tests/recovery/ kill real processes):
- imports: a cut-off one fails ("the dataset is unchanged"), its staged and half-moved files are
  removed; every project's dataset folder loses image files without a row and thumbnails of no
  recorded image; queued ones run again, in order.
- training: a run whose last sign of life predates the current Ray cluster cannot be running in
  it and becomes `interrupted` (resumable) at once; later ones are watched by their heartbeat.
- evaluations and exports: a cut-off one fails (an export's partial files are removed); queued
  ones run again, in order.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from fastapi import FastAPI

log = logging.getLogger("aistudio")


def recover_all(app: FastAPI) -> None:
    from appliance.services import datasets, evaluation, export, training

    recoverers = (datasets.recover_imports, training.recover_runs, evaluation.recover_evaluations, export.recover_exports)
    for recover in recoverers:
        try:
            recover(app)
        except Exception:
            log.exception("Start-up recovery step %s failed", recover.__name__)


def ray_started_at() -> datetime | None:
    """When the Ray cluster this process is connected to came up (the start of its oldest job),
    or None without Ray. Nothing started before it can be running in it: when the appliance
    started its own Ray, every run of an earlier process is gone."""
    try:
        import ray
        from ray._private import state

        if not ray.is_initialized():
            return None
        starts = [job["StartTime"] for job in state.jobs() if job.get("StartTime")]
    except Exception:
        log.exception("Could not read the Ray cluster's start time")
        return None
    return datetime.fromtimestamp(min(starts) / 1000, tz=timezone.utc) if starts else None
