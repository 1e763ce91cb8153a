"""Entry points for the import's worker process that change one thing inside it, for tests.

The import runs in a process of its own (`appliance.services.import_worker`), so a test's
monkeypatch in the test process never reaches it. A test points the worker at one of these
instead (`monkeypatch.setattr(datasets, "WORKER_ENTRY", hook("held"))`); each applies its change
in the worker and runs the real worker. Gates are files beside the source folder (`<root>.started`,
`<root>.release`), which the test creates and watches.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from appliance.services import datasets, import_worker


def hook(name: str) -> str:
    """The WORKER_ENTRY value that runs hook `name`."""
    return f"{__name__}:{name}"


def started(root: Path) -> Path:
    return root.parent / f"{root.name}.started"


def release(root: Path) -> Path:
    return root.parent / f"{root.name}.release"


def _parse_gated(on_hold):
    real = datasets.plan_source

    def gated(root, *args, **kwargs):
        started(Path(root)).write_text(str(os.getpid()))  # the worker's pid: where the parse runs
        on_hold(Path(root))
        return real(root, *args, **kwargs)

    datasets.plan_source = gated


def held(argv: list[str]) -> int:
    """Parsing waits until the test creates `<root>.release` (the worker checks for cancels only later)."""
    def wait(root: Path) -> None:
        while not release(root).exists():
            time.sleep(0.05)

    _parse_gated(wait)
    return import_worker.main(argv)


def stuck(argv: list[str]) -> int:
    """Parsing never returns and notices no cancel: like a read of a file that never ends."""
    def forever(_root: Path) -> None:
        while True:
            time.sleep(3600)

    _parse_gated(forever)
    return import_worker.main(argv)


def broken_insert(argv: list[str]) -> int:
    """The commit's row insert fails after every file was moved into the dataset folder."""
    def insert(*_args, **_kwargs):
        raise OSError("disk full (simulated)")

    datasets.insert = insert
    return import_worker.main(argv)


def killed_in_commit(argv: list[str]) -> int:
    """The worker is SIGKILLed (as the kernel's OOM killer does) after every file was moved into
    the dataset folder, before the rows are inserted."""
    def insert(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    datasets.insert = insert
    return import_worker.main(argv)


FULL_DISK_FILE = "/srv/aistudio/workspace/staging/imp-x/images/a.jpg"


def full_disk(argv: list[str]) -> int:
    """The commit's row insert fails with an OS error naming a server file (a full disk)."""
    import errno

    def insert(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", FULL_DISK_FILE)

    datasets.insert = insert
    return import_worker.main(argv)
