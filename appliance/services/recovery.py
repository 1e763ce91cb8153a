"""Start-up reconciliation: every job-like record left queued/running by a previous process is
either picked up again or marked as cut off. Each capability contributes its own `recover`."""

from __future__ import annotations

import logging

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
