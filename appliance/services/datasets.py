"""Datasets: import jobs (ingest, then commit), the health summary, browsing, image files.

An import never changes the project's dataset until it commits: the source is parsed, then each
image is read, checked and written once, straight into the dataset folder under a new image id
(with its thumbnail), by a pool of processes (`import_pool`); no page or route sees a file without
its row. The rows wait in `staging/<import_id>/` and are inserted in one transaction at the end.
A failure or a cancel before that removes the files it wrote and leaves the dataset as it was
(a killed worker's files are swept the same way when the job is closed, or at start-up).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import delete, func, insert, literal, select, tuple_
from sqlalchemy.orm import Session, selectinload

from appliance.config import Settings
from appliance.store.db import session_scope
from appliance.store.errors import (
    AppError, ForbiddenPath, InvalidDataset, NotFound, PayloadTooLarge, TooManyRequests, ValidationFailed,
)
from appliance.store import imports
from appliance.store.ids import check_id, new_id
from appliance.store.imports import CANCELLED_MESSAGE, INTERRUPTED_MESSAGE
from appliance.store.status import JobStatus
from appliance.store.tables import Box, Image, ImportJob, Project, SplitAssignment, utcnow
from appliance.store.paths import Workspace, is_within, safe_join
from appliance.importers import (
    DEFAULT_MAX_IMAGE_PIXELS, SourcePlan, check_free_space, check_zip, extract_zip, finish_item, no_usable_image,
    plan_source,
)
from appliance.importers.parsed import is_utf8_text, utf8_text
from appliance.importers.yolo import choose_yaml
from appliance.services import deletion, health, import_pool
from appliance.services.thumbnails import thumbnail_url
from appliance.services.projects import get_owned, get_project

log = logging.getLogger("aistudio.datasets")

IMPORT_FORMATS = ("auto", "folder", "csv", "coco", "yolo", "voc")
_PROGRESS_EVERY_S = 0.5
IMBALANCE_RATIO = 10
DEFAULT_NEAR_DUPLICATE_DISTANCE = 6  # the default of AISTUDIO_NEAR_DUPLICATE_DISTANCE
_STAGED_ZIP = "upload.zip"  # an upload's name in its staging folder


class ImportCancelled(Exception):
    pass


# ---------------------------------------------------------------- import requests

def check_format(fmt: str) -> str:
    if fmt not in IMPORT_FORMATS:
        raise ValidationFailed(f"format: must be one of {', '.join(IMPORT_FORMATS)} (got {fmt!r})")
    return fmt


def check_yaml_file(yaml_file: str | None) -> str | None:
    """The `yaml_file` option: the bare name of a YAML file at the dataset root, or None."""
    if yaml_file is None or yaml_file == "":
        return None
    bad = any(c in yaml_file for c in "/\\") or yaml_file.startswith(".") or yaml_file != yaml_file.strip()
    if bad or not yaml_file.isprintable() or not is_utf8_text(yaml_file) or not yaml_file.lower().endswith((".yaml", ".yml")):
        raise ValidationFailed(f"yaml_file: must be the name of a .yaml or .yml file at the dataset root, "
                               f"without folders (got {utf8_text(yaml_file[:80])!r})")
    return yaml_file


def start_local_import(session: Session, settings: Settings, project_id: str, source_path: str, fmt: str,
                       yaml_file: str | None = None) -> ImportJob:
    get_project(session, project_id)
    check_format(fmt)
    yaml_file = check_yaml_file(yaml_file)
    admit_import(session, settings, None, None)
    if "\x00" in source_path:  # the OS can't take it: every path call would raise ValueError
        raise ValidationFailed("source_path: contains a NUL character, which no path on the server can hold")
    try:
        source = Path(source_path).expanduser()
    except RuntimeError:  # `~name/…` for a user the server does not know
        raise ValidationFailed("source_path: starts with ~ and a user the server does not know") from None
    if not source.is_absolute():
        raise ValidationFailed(f"source_path: must be an absolute path on the server (got {source_path!r})")
    roots = settings.allowed_import_roots
    try:
        inside = is_within(source, roots)
        folder = inside and source.resolve().is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ValidationFailed(f"source_path: not a usable path on the server ({exc.strerror})") from None
    if not inside:
        # Not echoed: messages never show a server path outside the import roots.
        raise ForbiddenPath(
            f"source_path: the folder is outside the allowed import roots ({', '.join(map(str, roots))}); "
            "set AISTUDIO_IMPORT_ROOTS to allow it"
        )
    if not folder:
        raise InvalidDataset(f"source_path {source_path} is not a folder on the server")
    if fmt in ("auto", "yolo"):
        try:  # several root YAML files with class names and none chosen: refused now, not by the job later
            choose_yaml(source.resolve(), yaml_file)
        except OSError:  # unreadable folder: the job reports it
            pass
    return _queue(session, project_id, fmt, str(source.resolve()), yaml_file=yaml_file)


def new_upload_stage(workspace: Workspace) -> tuple[str, Path]:
    """A new import id and the path its uploaded ZIP is to be written to (its folder exists)."""
    import_id = new_id("import")
    stage = workspace.staging_dir / import_id
    stage.mkdir(parents=True)
    return import_id, stage / _STAGED_ZIP


def check_upload_project(session: Session, project_id: str) -> None:
    """404 for an upload to a project that does not exist (checked before its archive arrives)."""
    get_project(session, project_id)


def discard_stage(workspace: Workspace, import_id: str) -> None:
    shutil.rmtree(workspace.staging_dir / import_id, ignore_errors=True)


def queue_staged_upload(
    session: Session, settings: Settings, workspace: Workspace, project_id: str, fmt: str, import_id: str, filename: str,
    yaml_file: str | None = None,
) -> ImportJob:
    """Check the ZIP already written by `new_upload_stage`'s caller and queue its import; on any
    refusal the staged upload is removed."""
    name = Path(filename or _STAGED_ZIP).name
    try:
        get_project(session, project_id)
        check_format(fmt)
        yaml_file = check_yaml_file(yaml_file)
        stage = workspace.staging_dir / import_id
        _check_upload(stage / _STAGED_ZIP, settings, stage)
        return _queue(session, project_id, fmt, f"upload:{name}", import_id=import_id, yaml_file=yaml_file)
    except BaseException as exc:
        discard_stage(workspace, import_id)
        if isinstance(exc, AppError):
            _name_upload(exc, name)
        raise


def admit_import(session: Session, settings: Settings, workspace: Workspace | None, declared_size: int | None) -> None:
    """Before a new import is accepted (and before an upload's body is written): at most
    `max_active_imports` imports queued or running (429 beyond), and for an upload, room on the
    workspace disk for its declared size plus the margin (507)."""
    active = session.scalar(
        select(func.count()).select_from(ImportJob).where(ImportJob.status.in_(imports.IN_PROGRESS))
    ) or 0
    if active >= settings.max_active_imports:
        raise TooManyRequests(
            f"{active} imports are already queued or running, the most allowed (AISTUDIO_MAX_ACTIVE_IMPORTS); "
            "wait for one to finish and try again"
        )
    if workspace is not None and declared_size is not None:
        check_free_space(workspace.staging_dir, declared_size, settings.disk_free_margin_bytes, "file: the upload")


def _check_upload(archive: Path, settings: Settings, stage: Path) -> None:
    """The archive's directory is safe, and the disk has room to extract it."""
    members = check_zip(archive, max_total_bytes=settings.max_upload_bytes)
    check_free_space(stage, sum(info.file_size for info in members), settings.disk_free_margin_bytes,
                     f"{archive.name}: extracting it")


def _name_upload(exc: AppError, name: str) -> None:
    """Messages about the staged archive name the file the user uploaded, not `upload.zip`."""
    if exc.message.startswith(_STAGED_ZIP + ":"):
        exc.message = name + exc.message[len(_STAGED_ZIP):]


def upload_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"file: the upload is larger than the limit of {limit} bytes (AISTUDIO_MAX_UPLOAD_BYTES)")


def _queue(session: Session, project_id: str, fmt: str, source: str, import_id: str | None = None,
           yaml_file: str | None = None) -> ImportJob:
    return imports.queue(session, project_id, fmt, source, import_id, yaml_file=yaml_file)


def get_import(session: Session, project_id: str, import_id: str) -> ImportJob:
    return get_owned(session, ImportJob, "import", project_id, import_id)


def cancel_import(session: Session, project_id: str, import_id: str) -> ImportJob:
    """A queued import is cancelled at once; a running one is asked to stop (`cancelling`) and
    becomes `cancelled` when the job notices. Conditional updates: the job may start meanwhile."""
    return imports.cancel(session, get_import(session, project_id, import_id))


def import_public(job: ImportJob, now: datetime | None = None) -> dict:
    return {
        "id": job.id, "project_id": job.project_id, "status": job.status, "format": job.format,
        "source": job.source, "yaml_file": job.yaml_file, "detected": job.detected, "done": job.done, "total": job.total,
        "added": job.added, "skipped": job.skipped, "duplicates": job.duplicates,
        "warnings": job.warnings or [], "error": job.error,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        **import_rate(job, now),
    }


def import_rate(job: ImportJob, now: datetime | None = None) -> dict:
    """`images_per_s` (images checked per second since the job started running) and `eta_s` (seconds
    left at that rate), from the stored progress and start time alone: any process can answer.
    None while nothing is known (queued, not started, no image checked yet); a finished job keeps
    its overall rate and has no ETA."""
    if job.started_at is None or job.done <= 0:
        return {"images_per_s": None, "eta_s": None}
    running = job.status in imports.IN_PROGRESS
    end = (now or utcnow()) if running or job.finished_at is None else job.finished_at
    elapsed = (_aware(end) - _aware(job.started_at)).total_seconds()
    if elapsed <= 0:
        return {"images_per_s": None, "eta_s": None}
    rate = job.done / elapsed
    eta = max(job.total - job.done, 0) / rate if running and job.total else None
    return {"images_per_s": round(rate, 1), "eta_s": round(eta, 1) if eta is not None else None}


def _aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- the import job

# The import runs in a process of its own (`appliance.services.import_worker`): parsing a huge
# annotation file or probing thousands of images costs that process's memory, never the web
# server's, and a worker killed for memory fails its job instead of the server.
WORKER_ENTRY = "appliance.services.import_worker:main"  # "module:function"; tests point it elsewhere
CANCEL_GRACE_S = 5.0  # a cancelled import's worker gets this long to stop by itself, then is killed
_POLL_S = 0.25
_WORKER_BOOT = (
    "import importlib, json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "module, _, name = sys.argv[2].partition(':'); sys.exit(getattr(importlib.import_module(module), name)(sys.argv[3:]))"
)
_workers: dict[subprocess.Popen, Path] = {}  # running workers and their workspace
_stopped: set[subprocess.Popen] = set()  # killed because their server stopped
_workers_lock = threading.Lock()


def run_import(settings: Settings, import_id: str) -> None:
    """The job body (runs in the runner's import lane): start the job's worker process and wait
    for it. A cancel the worker does not act on within CANCEL_GRACE_S (stuck reading a file)
    kills it; a worker that dies (killed for memory, a crash) fails the job with a message, and
    whatever it had moved into the dataset folder without rows is removed."""
    try:
        proc = _start_worker(settings, import_id)
    except OSError as exc:
        _close_after_worker(settings, import_id, JobStatus.FAILED, f"Could not start the import's worker process ({exc})")
        return
    cancel_seen, killed_for_cancel = None, False
    try:
        while True:
            try:
                code = proc.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if imports.cancel_requested(settings.db_url, import_id):
                cancel_seen = cancel_seen or time.monotonic()
                if time.monotonic() - cancel_seen >= CANCEL_GRACE_S:
                    log.warning("Import %s: the worker did not stop within %ss of the cancel; killing it",
                                import_id, CANCEL_GRACE_S)
                    proc.kill()
                    killed_for_cancel = True
    finally:
        with _workers_lock:
            _workers.pop(proc, None)
            stopped = proc in _stopped
            _stopped.discard(proc)
    if killed_for_cancel:
        _close_after_worker(settings, import_id, JobStatus.CANCELLED, CANCELLED_MESSAGE)
    elif stopped:
        _close_after_worker(settings, import_id, JobStatus.FAILED, INTERRUPTED_MESSAGE)
    else:
        # Exit 0 closes the job itself; anything left open now was cut off.
        _close_after_worker(settings, import_id, JobStatus.FAILED, _worker_death(code))
    _warm_health(settings, import_id)


def _warm_health(settings: Settings, import_id: str) -> None:
    """After an import (still in the import lane): compute the project's near-duplicate groups now,
    so the dataset summary answers from the cache instead of the first page view paying for them."""
    try:
        with session_scope(settings.db_url) as s:
            job = s.get(ImportJob, import_id)
            project_id = job.project_id if job is not None else None
        if project_id is not None:
            health.warm(settings.db_url, project_id, settings.near_duplicate_distance)
    except Exception:  # a deleted project, a database hiccup: the summary computes them later
        log.exception("Import %s: near-duplicate groups not precomputed", import_id)


def _start_worker(settings: Settings, import_id: str) -> subprocess.Popen:
    path = json.dumps([p or os.getcwd() for p in sys.path])  # the very code this process runs
    argv = [sys.executable, "-c", _WORKER_BOOT, path, WORKER_ENTRY, import_id, str(os.getpid())]
    with _workers_lock:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True)
        _workers[proc] = settings.workspace
    try:
        proc.stdin.write(settings.model_dump_json().encode())
        proc.stdin.close()
    except OSError:  # it died at once; its exit code tells
        pass
    log.info("Import %s: worker process %s started", import_id, proc.pid)
    return proc


def _worker_death(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = ", most likely for lack of memory" if -code == signal.SIGKILL else ""
        return f"The import's worker process was killed ({name}){cause}; the dataset is unchanged"
    return f"The import's worker process exited with code {code} (see the server log); the dataset is unchanged"


def _close_after_worker(settings: Settings, import_id: str, status: JobStatus, message: str) -> None:
    workspace = Workspace(settings.workspace)
    with session_scope(settings.db_url) as s:
        project_id = imports.close_cut_off(s, import_id, status, message)
        if project_id is not None:
            log.warning("Import %s closed after its worker ended: %s", import_id, message)
            _remove_unrecorded_images(s, workspace, project_id)
    shutil.rmtree(workspace.staging_dir / import_id, ignore_errors=True)


def stop_import_workers(workspace: Path) -> None:
    """At shutdown: kill the import workers of this workspace; their jobs fail as interrupted
    (or start-up recovery closes them, if this process is gone first)."""
    with _workers_lock:
        for proc, where in _workers.items():
            if where == workspace and proc.poll() is None:
                _stopped.add(proc)
                proc.kill()


def run_import_here(settings: Settings, import_id: str) -> None:
    """The import itself, in the calling process (the worker process calls it). Its staging folder
    is removed before the job's end is recorded, so a finished job never has staging left."""
    workspace = Workspace(settings.workspace)
    stage = workspace.staging_dir / import_id
    url = settings.db_url
    finish: Callable[[], None] | None = None
    try:
        started = imports.start(url, import_id)
        if started is None:
            return
        project_id, task, fmt, source = started
        stage.mkdir(parents=True, exist_ok=True)
        root = _source_root(settings, stage, source)
        tracker = _Progress(url, import_id)
        plan = plan_source(root, fmt, task, max_annotation_bytes=settings.max_annotation_bytes,
                           yaml_file=imports.yaml_file(url, import_id))
        tracker.check_cancel()
        added, duplicates, usable = _stage_and_commit(
            url, workspace, project_id, import_id, plan, stage, tracker, owned=source.startswith("upload:"),
            max_pixels=settings.max_image_pixels, workers=import_pool.pool_size(settings.import_workers))
        warnings = [{"file": w.file, "reason": w.reason} for w in plan.warnings]
        finish = partial(imports.complete, url, import_id, plan.detected, added, duplicates, warnings, usable)
    except ImportCancelled:
        finish = partial(imports.finish, url, import_id, JobStatus.CANCELLED, CANCELLED_MESSAGE)
    except AppError as exc:
        finish = partial(imports.finish, url, import_id, JobStatus.FAILED, exc.message)
    except MemoryError:
        finish = partial(imports.finish, url, import_id, JobStatus.FAILED,
                         "The import ran out of memory; the dataset is unchanged. Split the dataset or its annotation files")
    except Exception as exc:  # a bug or an OS error: fail the job, never leave it running
        log.exception("Import %s failed", import_id)
        finish = partial(imports.finish, url, import_id, JobStatus.FAILED,
                         f"Unexpected error: {_without_paths(exc, settings)}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if finish is not None:
            finish()


def _without_paths(exc: Exception, settings: Settings) -> str:
    """The error's text for the user, without server paths: an OS error's reason, not the file it
    names (a staging or workspace path); the workspace is never spelled out (the log has it all)."""
    text = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) and exc.filename else str(exc)
    for folder in {str(settings.workspace), str(Path(settings.workspace).resolve())}:
        text = text.replace(folder, "<workspace>")
    return text


def _source_root(settings: Settings, stage: Path, source: str) -> Path:
    if source.startswith("upload:"):
        try:
            return extract_zip(stage / _STAGED_ZIP, stage / "src", max_total_bytes=settings.max_upload_bytes,
                               free_margin=settings.disk_free_margin_bytes)
        except AppError as exc:
            _name_upload(exc, source.removeprefix("upload:"))
            raise
    root = Path(source)
    if not is_within(root, settings.allowed_import_roots):  # roots may have changed since the request
        raise ForbiddenPath("source_path: the folder is no longer inside the allowed import roots (AISTUDIO_IMPORT_ROOTS)")
    return root


class _Progress:
    """Throttled progress writes, and the place where a cancel request is noticed."""

    def __init__(self, url: str, import_id: str):
        self.url, self.import_id, self._last = url, import_id, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < _PROGRESS_EVERY_S and done != total:
            return
        self._last = now
        if imports.set_progress(self.url, self.import_id, done, total):
            raise ImportCancelled()

    def check_cancel(self) -> None:
        if imports.cancel_requested(self.url, self.import_id):
            raise ImportCancelled()


def _stage_and_commit(url, workspace: Workspace, project_id, import_id, plan: SourcePlan, stage: Path, tracker,
                      owned: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                      workers: int = 1) -> tuple[int, int, int]:
    """Ingest every candidate of `plan` (read, hash, decode, store, thumbnail, perceptual hash: once
    each, in `workers` processes, `import_pool`), then insert the rows in one transaction; returns
    (added, duplicates, usable images). `owned`: the source files are ours (an extracted upload),
    so they are moved, not copied.

    Files are written straight to the dataset folder under their new image ids; until the rows are
    committed nothing lists them (every page and route goes by the rows). The rows wait in a spool
    file in the staging folder, so memory does not grow with the dataset. A cancel, a failure or a
    failed insert stops the pool and removes every file of the project without a row (imports run
    one at a time: those are this import's); a killed worker's are removed by `_close_after_worker`
    or start-up's sweep, the same way."""
    with session_scope(url) as s:
        known = set(s.scalars(select(Image.sha256).where(Image.project_id == project_id)))
    target_dir, thumbs = workspace.images_dir(project_id), workspace.thumbs_dir(project_id)
    target_dir.mkdir(parents=True, exist_ok=True)
    thumbs.mkdir(parents=True, exist_ok=True)
    spool_path = stage / "rows.pickle"
    total, done, added, duplicates, usable = len(plan.candidates), 0, 0, 0, 0
    queue = deque((new_id("image"), c) for c in plan.candidates)
    plan.candidates = []  # memory: each candidate is dropped once ingested

    def items():
        while queue:
            yield queue.popleft()

    target = import_pool.Target(str(target_dir), str(thumbs), max_pixels, owned)
    try:
        with open(spool_path, "wb") as spool, import_pool.IngestPool(workers, target) as pool:
            for chunk, results in pool.run(import_pool.chunked(items()),
                                           lambda it: (it[0], str(it[1].raw.source), it[1].relpath)):
                rows, boxes = [], []
                for (image_id, candidate), result in zip(chunk, results):
                    if result[0] == "skip":
                        finish_item(candidate, None, result[1], plan.warnings)
                        continue
                    _, filename, info, size_bytes, _thumb, phash = result
                    item = finish_item(candidate, info, None, plan.warnings)
                    if item is not None:
                        usable += 1
                    if item is None or info.sha256 in known:
                        duplicates += item is not None
                        (target_dir / filename).unlink(missing_ok=True)
                        (thumbs / Workspace.thumb_name(filename)).unlink(missing_ok=True)
                        continue
                    known.add(info.sha256)
                    rows.append({
                        "id": image_id, "project_id": project_id, "filename": filename,
                        "original_name": item.relpath, "sha256": info.sha256, "width": info.width,
                        "height": info.height, "size_bytes": size_bytes, "label": item.label,
                        "subset_hint": item.subset_hint, "import_id": import_id, "created_at": utcnow(), "phash": phash,
                    })
                    boxes += [{"image_id": image_id, "label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2,
                               "y2": b.y2, "difficult": b.difficult} for b in item.boxes]
                if rows:
                    pickle.dump((rows, boxes), spool, protocol=pickle.HIGHEST_PROTOCOL)
                    added += len(rows)
                done += len(chunk)
                tracker(done, total)
        if not usable:
            raise no_usable_image(plan.described, plan.warnings)
        tracker.check_cancel()
        # Commit: every row in one transaction, read back from the spool a chunk at a time.
        with session_scope(url) as s, open(spool_path, "rb") as spool:
            while True:
                try:
                    rows, boxes = pickle.load(spool)
                except EOFError:
                    break
                s.execute(insert(Image), rows)
                if boxes:
                    s.execute(insert(Box), boxes)
    except BaseException:
        with session_scope(url) as s:
            _remove_unrecorded_images(s, workspace, project_id, quiet=True)
        raise
    return added, duplicates, usable


def recover_imports(app) -> None:
    """At start-up: an import cut off mid-run failed and left the dataset unchanged — unless its
    rows were committed (the process died just before closing the job), then it completed.
    Every project's dataset folder is swept of files without an image row (moved in by a commit
    cut off before its rows, or left by a deletion cut off before its files) and of thumbnails
    of no recorded image; and staging of everything no queued import owns (a cut-off import's
    files, an upload cut off mid-stream, a try-one-image scratch folder). Queued imports run
    again, in order."""
    settings, workspace = app.state.settings, app.state.workspace
    with session_scope(settings.db_url) as s:
        _swept, queued = imports.recover(s)
        for project_id in list(s.scalars(select(Project.id))):
            _remove_unrecorded_images(s, workspace, project_id)
    if workspace.staging_dir.is_dir():
        for leftover in workspace.staging_dir.iterdir():
            if leftover.name not in queued:
                _remove(leftover)
    for import_id in queued:
        app.state.runner.submit("import", run_import, settings, import_id)
    # Perceptual hashes of images imported before hashing existed (after the queued imports: one lane).
    app.state.runner.submit("import", health.backfill_phashes, settings)


def _remove_unrecorded_images(session: Session, workspace: Workspace, project_id: str, quiet: bool = False) -> None:
    """Dataset files without an image row (moved in by a commit that never reached the database,
    or whose row was deleted before the file), and thumbnails of no recorded image."""
    recorded = set(session.scalars(select(Image.filename).where(Image.project_id == project_id)))
    for folder, wanted in ((workspace.images_dir(project_id), recorded),
                           (workspace.thumbs_dir(project_id), {Workspace.thumb_name(name) for name in recorded})):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name not in wanted:
                if not quiet:
                    log.warning("Removing %s: no image record (cut off while importing or deleting)", path)
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- summary and browsing

def summary(session: Session, project_id: str, near_duplicate_distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE) -> dict:
    """The dataset's figures, from indexed SQL aggregates (GROUP BY, min/max/avg, a median by an
    ordered offset): no loop over the images in Python, whatever the dataset's size."""
    project = get_project(session, project_id)
    mine = Image.project_id == project_id
    image_count = session.scalar(select(func.count()).select_from(Image).where(mine)) or 0
    in_project = select(Box).join(Image, Image.id == Box.image_id).where(mine)
    boxes_per_class = dict(session.execute(
        in_project.with_only_columns(Box.label, func.count()).group_by(Box.label)).all())
    box_count = sum(boxes_per_class.values())
    if project.task == "classification":
        class_counts = dict(session.execute(
            select(Image.label, func.count()).where(mine, Image.label.is_not(None)).group_by(Image.label)).all())
        unlabeled = session.scalar(select(func.count()).select_from(Image).where(mine, Image.label.is_(None))) or 0
        per_image = None
    else:
        class_counts = dict(session.execute(
            in_project.with_only_columns(Box.label, func.count(Box.image_id.distinct())).group_by(Box.label)).all())
        with_boxes = session.scalar(in_project.with_only_columns(func.count(Box.image_id.distinct()))) or 0
        unlabeled = image_count - with_boxes
        counts = (select(func.count(Box.id).label("v")).select_from(Image)
                  .outerjoin(Box, Box.image_id == Image.id).where(mine).group_by(Image.id))
        per_image = _sql_stats(session, counts.subquery())
    aspect = (Image.width * 1.0 / Image.height)
    last = session.scalars(
        select(ImportJob).where(ImportJob.project_id == project_id).order_by(ImportJob.created_at.desc()).limit(1)
    ).first()
    warnings = []
    counts_sorted = sorted(class_counts.values())
    if len(counts_sorted) >= 2 and counts_sorted[0] and counts_sorted[-1] / counts_sorted[0] >= IMBALANCE_RATIO:
        warnings.append(
            f"Strong class imbalance: the largest class has {counts_sorted[-1] / counts_sorted[0]:.0f}x the images of "
            "the smallest; consider class-weighted loss or more images of the rare classes"
        )
    checks = health.checks(session, project_id, Counter(class_counts), near_duplicate_distance, has_boxes=box_count > 0)
    return {
        "project_id": project_id,
        "task": project.task,
        "image_count": image_count,
        "classes": [{"name": name, "images": n, "boxes": boxes_per_class.get(name, 0)} for name, n in sorted(class_counts.items())],
        "box_count": box_count,
        "boxes_per_class": dict(sorted(boxes_per_class.items())),
        "boxes_per_image": per_image,
        "width": _sql_stats(session, select(Image.width.label("v")).where(mine).subquery()),
        "height": _sql_stats(session, select(Image.height.label("v")).where(mine).subquery()),
        "aspect_ratio": _sql_stats(session, select(aspect.label("v")).where(mine, Image.height != 0).subquery()),
        "images_without_labels": unlabeled,
        "near_duplicate_groups": checks["near_duplicate_groups"],
        "health": checks,
        "warnings": warnings,
        "last_import": import_public(last) if last else None,
    }


def _sql_stats(session: Session, values) -> dict | None:
    """min / max / mean / median of the one column `v` of the subquery `values`, computed in SQL
    (the median from the one or two middle values, as statistics.median)."""
    n, low, high, total = session.execute(
        select(func.count(), func.min(values.c.v), func.max(values.c.v), func.sum(values.c.v))).one()
    if not n:
        return None
    middle = list(session.scalars(select(values.c.v).order_by(values.c.v).offset((n - 1) // 2)
                                  .limit(1 if n % 2 else 2)))
    median = middle[0] if n % 2 else (middle[0] + middle[1]) / 2
    return {"min": low, "max": high, "mean": round(total / n, 3), "median": median}


class ImagePage(NamedTuple):
    items: list[dict]
    total: int
    next_cursor: str | None  # the `cursor` of the page after this one; None on the last page
    position: int | None = None  # images before this page (with_position)
    prev_cursor: str | None = None  # the `cursor` of the page before (None: the first page, no cursor)


def encode_cursor(created_at: datetime, image_id: str) -> str:
    """An opaque keyset cursor: the (created_at, id) of the last image of a page."""
    raw = json.dumps([created_at.astimezone(timezone.utc).isoformat(), image_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor names; ValidationFailed naming `cursor` for anything else."""
    try:
        created, image_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_at = datetime.fromisoformat(created)
        check_id("image", image_id)
        if created_at.tzinfo is None:
            raise ValueError("naive")
        return created_at, image_id
    except Exception:
        raise ValidationFailed("cursor: not a cursor of this list (pass the next_cursor of the previous page, "
                               "or leave it out for the first page)") from None


def list_images(session: Session, project_id: str, offset: int, limit: int, label: str | None = None,
                split_id: str | None = None, subset: str | None = None, issue: str | None = None,
                near_duplicate_distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE,
                cursor: str | None = None, with_position: bool = False) -> ImagePage:
    """A page of images in import order (created_at, id), filtered in SQL; `issue`: only the images a
    health check flags (`health.ISSUES`). `cursor` (keyset: the page after the one that returned it)
    or `offset`, not both. Every filter is served by an index (migration 0003_browse)."""
    project = get_project(session, project_id)
    after = decode_cursor(cursor) if cursor else None
    if after is not None and offset:
        raise ValidationFailed("offset: cannot be combined with cursor (a cursor already says where the page starts)")
    query = select(Image).where(Image.project_id == project_id)
    if issue and issue != "near_duplicate":
        query = query.where(health.issue_condition(issue))
    if label:
        if project.task == "classification":
            query = query.where(Image.label == label)
        else:
            query = query.where(Image.id.in_(select(Box.image_id).where(Box.label == label)))
    if subset and not split_id:
        raise ValidationFailed("subset: needs split_id")
    if split_id:
        from appliance.services.splits import get_split

        get_split(session, project_id, split_id)
        sub = select(SplitAssignment.image_id).where(SplitAssignment.split_id == split_id)
        if subset:
            sub = sub.where(SplitAssignment.subset == subset)
        query = query.where(Image.id.in_(sub))
    order = (Image.created_at, Image.id)
    filtered = query
    if after is not None:
        query = query.where(tuple_(Image.created_at, Image.id) > tuple_(literal(after[0], Image.created_at.type),
                                                                       literal(after[1], Image.id.type)))
    if issue == "near_duplicate":  # a set from the index, possibly larger than SQL's parameter limit: filter here
        flagged = health.near_duplicate_ids(session, project_id, near_duplicate_distance)
        total = sum(1 for i in session.scalars(filtered.with_only_columns(Image.id)) if i in flagged)
        ids = []
        for image_id in session.scalars(query.with_only_columns(Image.id).order_by(*order)):
            if image_id in flagged:
                ids.append(image_id)
                if len(ids) > offset + limit:
                    break
        query, offset = query.where(Image.id.in_(ids[offset:offset + limit + 1])), 0
    else:
        total = session.scalar(filtered.with_only_columns(func.count()).order_by(None)) or 0
    rows = list(session.scalars(query.options(selectinload(Image.boxes)).order_by(*order).offset(offset)
                                .limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    page = ImagePage([image_public(r) for r in rows], total, next_cursor)
    if with_position and after is not None and issue != "near_duplicate":  # for the page grid's Prev and range
        key = tuple_(Image.created_at, Image.id)
        first = tuple_(literal(after[0], Image.created_at.type), literal(after[1], Image.id.type))
        before = filtered.where(key <= first)
        position = session.scalar(before.with_only_columns(func.count()).order_by(None)) or 0
        back = session.execute(before.with_only_columns(Image.created_at, Image.id)
                               .order_by(Image.created_at.desc(), Image.id.desc()).offset(limit).limit(1)).first()
        page = page._replace(position=position, prev_cursor=encode_cursor(*back) if back else None)
    return page


def image_public(image: Image) -> dict:
    return {
        "id": image.id, "filename": image.filename, "original_name": image.original_name,
        "width": image.width, "height": image.height, "size_bytes": image.size_bytes, "label": image.label,
        "subset_hint": image.subset_hint, "sha256": image.sha256,
        "boxes": [{"label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "difficult": bool(b.difficult)}
                  for b in image.boxes],
        "url": f"/api/datasets/{image.project_id}/image/{image.filename}",
        "thumbnail_url": thumbnail_url(image.project_id, image.filename, image.sha256),
    }



def get_image(session: Session, project_id: str, image_id: str) -> Image:
    return get_owned(session, Image, "image", project_id, image_id)


def delete_image(session: Session, workspace: Workspace, project_id: str, image_id: str, force: bool = False) -> None:
    image = get_image(session, project_id, image_id)
    deletion.clear_the_way(session, f"Image {image_id}", deletion.image_jobs(session, image.id), force)
    filename = image.filename
    session.execute(delete(Image).where(Image.id == image_id))
    session.commit()
    (workspace.images_dir(project_id) / filename).unlink(missing_ok=True)
    (workspace.thumbs_dir(project_id) / Workspace.thumb_name(filename)).unlink(missing_ok=True)




def image_file(session: Session, workspace: Workspace, project_id: str, filename: str) -> Path:
    """The stored file for `filename`, only if it is an image row of this project."""
    get_project(session, project_id)
    found = session.scalar(select(Image.id).where(Image.project_id == project_id, Image.filename == filename))
    if found is None:
        raise NotFound(f"File {filename} not found")
    path = safe_join(workspace.images_dir(project_id), filename)
    if not path.is_file():
        raise NotFound(f"File {filename} not found")
    return path
