"""Start-up reconciliation: every job-like record left queued/running by a previous process is
either picked up again or marked as cut off. Each capability contributes its own `recover`."""

from __future__ import annotations

import logging

from fastapi import FastAPI

log = logging.getLogger("aistudio")

# Filled by capability modules as they are written: callables taking the FastAPI app.
RECOVERERS: list = []


def recover_all(app: FastAPI) -> None:
    for recover in RECOVERERS:
        try:
            recover(app)
        except Exception:
            log.exception("Start-up recovery step %s failed", getattr(recover, "__name__", recover))
