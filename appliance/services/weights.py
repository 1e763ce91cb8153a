"""Pretrained weights: which catalog models have theirs in the cache, and one download at a time.

The download is `ray_jobs.core.catalog.download_weights`, the function `aistudio fetch-weights`
calls too, run in the job runner's `weights` lane of the ingress. Its progress is kept in memory
(`WeightsDownloads`, on `app.state`): the files in the cache are the lasting state, a file is
moved to its final name only once complete, and a restart leaves at most a `.part` file that the
next download replaces.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlparse

from appliance.config import Settings
from appliance.services.runner import JobRunner
from appliance.store.errors import Conflict, ValidationFailed


@dataclass
class Download:
    models: list[str]
    status: str = "running"  # running → completed | failed
    files_done: int = 0
    current: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    error: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None

    def public(self) -> dict:
        return {"status": self.status, "models": self.models, "files_done": self.files_done,
                "files_total": len(self.models), "current": self.current, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "error": self.error, "started_at": self.started_at,
                "finished_at": self.finished_at}


class WeightsDownloads:
    """The latest download of this ingress (one runs at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: Download | None = None


def source(settings: Settings) -> str:
    """The host the files come from, for the page ("download.pytorch.org" or the mirror's)."""
    from ray_jobs.core.catalog import TORCHVISION_URL

    return urlparse(settings.weights_url or TORCHVISION_URL).netloc or (settings.weights_url or "")


def models(settings: Settings, task: str | None = None) -> list[dict]:
    from ray_jobs.core.catalog import MODELS

    return [{"name": s.name, "task": s.task, "weights_file": s.weights_file,
             "available": (settings.weights_cache / s.weights_file).is_file()}
            for s in MODELS.values() if task is None or s.task == task]


def status(settings: Settings, downloads: WeightsDownloads, task: str | None = None) -> dict:
    if task not in (None, "classification", "detection"):
        raise ValidationFailed(f"task: unknown task '{task}'; use classification or detection")
    latest = downloads.latest
    # The download's state first, the files after: a download that completes in between then shows as
    # still running beside its files, never as completed beside files not yet there (a CI run under load).
    download = latest.public() if latest else None
    return {"models": models(settings, task), "source": source(settings), "download": download}


def start(settings: Settings, runner: JobRunner, downloads: WeightsDownloads, stopping: threading.Event,
          names: list[str] | None) -> dict:
    """Queue the download of `names` (default: every catalog model) whose files are missing."""
    from ray_jobs.core.catalog import MODELS

    unknown = [n for n in names or [] if n not in MODELS]
    if unknown:
        raise ValidationFailed(f"models: unknown model {', '.join(repr(n) for n in unknown)}; "
                               f"valid models: {', '.join(MODELS)}")
    wanted = [m["name"] for m in models(settings) if not m["available"] and (not names or m["name"] in names)]
    if names:  # keep the caller's order (the page puts the selected model first)
        wanted.sort(key=names.index)
    with downloads.lock:
        if downloads.latest and downloads.latest.status == "running":
            raise Conflict("A weights download is already running; wait for it (GET /api/weights shows its progress)")
        job = downloads.latest = Download(models=wanted)
        if not wanted:
            job.status, job.finished_at = "completed", job.started_at
        else:
            runner.submit("weights", _run, settings, job, stopping)
    return job.public()


def _run(settings: Settings, job: Download, stopping: threading.Event) -> None:
    from ray_jobs.core.catalog import WeightsDownloadError, download_weights

    def progress(file: str, done: int, total: int | None) -> None:
        if stopping.is_set():
            raise WeightsDownloadError(f"{file}: the appliance is shutting down")
        job.current, job.bytes_done, job.bytes_total = file, done, total

    folder = settings.weights_cache
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in job.models:
            download_weights(name, folder, base_url=settings.weights_url, verify=settings.weights_verify,
                             progress=progress)
            job.files_done += 1
        job.status = "completed"
    except WeightsDownloadError as exc:
        job.error, job.status = str(exc), "failed"
    except OSError as exc:  # the cache folder itself (full disk, permissions)
        job.error, job.status = f"weights cache: {exc.strerror or exc}", "failed"
    finally:
        job.current = None if job.status == "completed" else job.current
        job.finished_at = datetime.now(timezone.utc)
