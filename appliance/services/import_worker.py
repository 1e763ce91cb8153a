"""The import job's own process: `datasets.run_import` starts it for each import and waits.

    python -c <boot> <sys.path> appliance.services.import_worker:main <import_id> <parent pid>

The settings arrive as JSON on stdin. It runs `datasets.run_import_here` (parse, stage, commit,
close the job) and dies with its parent, so a killed server never leaves it writing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time


def main(argv: list[str]) -> int:
    import_id, parent = argv[0], int(argv[1])
    _die_with(parent)
    from appliance.config import Settings
    from appliance.services import datasets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s import-worker %(levelname)s %(name)s: %(message)s")
    settings = Settings(**json.loads(sys.stdin.read()))
    datasets.run_import_here(settings, import_id)
    return 0


def _die_with(parent: int) -> None:
    """Exit when the server process is gone: at once on Linux (PR_SET_PDEATHSIG), else within a second."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # not Linux
        pass
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
