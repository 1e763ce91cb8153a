"""Datasets: import jobs (stage, then commit), the health summary, browsing, image files.

An import never changes the project's dataset until it commits: the source is parsed and the
images are written to `staging/<import_id>/`, then files move into the dataset folder and the
rows are inserted in one transaction. A failure or a cancel before that leaves the dataset as
it was; a failure during the commit removes the files it had moved.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, selectinload

from appliance.config import Settings
from appliance.store.db import session_scope
from appliance.store.errors import (
    AppError, ForbiddenPath, InvalidDataset, NotFound, PayloadTooLarge, ValidationFailed,
)
from appliance.store import imports
from appliance.store.ids import new_id
from appliance.store.imports import CANCELLED_MESSAGE
from appliance.store.status import JobStatus
from appliance.store.tables import Box, Image, ImportJob, SplitAssignment, utcnow
from appliance.store.paths import Workspace, is_within, safe_join
from appliance.importers import check_zip, extract_zip, make_thumbnail, parse_source, store_image
from appliance.services.projects import get_owned, get_project

log = logging.getLogger("aistudio.datasets")

IMPORT_FORMATS = ("auto", "folder", "csv", "coco", "yolo")
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif", "GIF": ".gif"}
_PROGRESS_EVERY_S = 0.5
IMBALANCE_RATIO = 10
_STAGED_ZIP = "upload.zip"  # an upload's name in its staging folder


class ImportCancelled(Exception):
    pass


# ---------------------------------------------------------------- import requests

def check_format(fmt: str) -> str:
    if fmt not in IMPORT_FORMATS:
        raise ValidationFailed(f"format: must be one of {', '.join(IMPORT_FORMATS)} (got {fmt!r})")
    return fmt


def start_local_import(session: Session, settings: Settings, project_id: str, source_path: str, fmt: str) -> ImportJob:
    get_project(session, project_id)
    check_format(fmt)
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
    return _queue(session, project_id, fmt, str(source.resolve()))


def start_upload_import(
    session: Session, settings: Settings, workspace: Workspace, project_id: str, fmt: str, upload, declared_size: int | None
) -> ImportJob:
    """Stream the uploaded ZIP to staging (bounded memory, size-limited), check it, queue the job."""
    get_project(session, project_id)
    check_format(fmt)
    limit = settings.max_upload_bytes
    if declared_size is not None and declared_size > limit + 1024 * 1024:
        raise _too_large(limit)
    import_id = new_id("import")
    name = Path(getattr(upload, "filename", None) or _STAGED_ZIP).name
    stage = workspace.staging_dir / import_id
    stage.mkdir(parents=True)
    archive = stage / _STAGED_ZIP
    try:
        written = 0
        with archive.open("wb") as out:
            while chunk := upload.file.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise _too_large(limit)
                out.write(chunk)
        check_zip(archive, max_total_bytes=limit)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, AppError):
            _name_upload(exc, name)
        raise
    return _queue(session, project_id, fmt, f"upload:{name}", import_id=import_id)


def _name_upload(exc: AppError, name: str) -> None:
    """Messages about the staged archive name the file the user uploaded, not `upload.zip`."""
    if exc.message.startswith(_STAGED_ZIP + ":"):
        exc.message = name + exc.message[len(_STAGED_ZIP):]


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"file: the upload is larger than the limit of {limit} bytes (AISTUDIO_MAX_UPLOAD_BYTES)")


def _queue(session: Session, project_id: str, fmt: str, source: str, import_id: str | None = None) -> ImportJob:
    return imports.queue(session, project_id, fmt, source, import_id)


def get_import(session: Session, project_id: str, import_id: str) -> ImportJob:
    return get_owned(session, ImportJob, "import", project_id, import_id)


def cancel_import(session: Session, project_id: str, import_id: str) -> ImportJob:
    """A queued import is cancelled at once; a running one is asked to stop (`cancelling`) and
    becomes `cancelled` when the job notices. Conditional updates: the job may start meanwhile."""
    return imports.cancel(session, get_import(session, project_id, import_id))


def import_public(job: ImportJob) -> dict:
    return {
        "id": job.id, "project_id": job.project_id, "status": job.status, "format": job.format,
        "source": job.source, "detected": job.detected, "done": job.done, "total": job.total,
        "added": job.added, "skipped": job.skipped, "duplicates": job.duplicates,
        "warnings": job.warnings or [], "error": job.error,
        "created_at": job.created_at, "finished_at": job.finished_at,
    }


# ---------------------------------------------------------------- the import job

def run_import(settings: Settings, import_id: str) -> None:
    """The job body (runs in the runner's import lane)."""
    workspace = Workspace(settings.workspace)
    stage = workspace.staging_dir / import_id
    url = settings.db_url
    try:
        started = imports.start(url, import_id)
        if started is None:
            return
        project_id, task, fmt, source = started
        root = _source_root(settings, stage, source)
        tracker = _Progress(url, import_id)
        parsed = parse_source(root, fmt, task, progress=tracker)
        tracker.check_cancel()
        added, duplicates = _stage_and_commit(url, workspace, project_id, import_id, parsed, stage, tracker,
                                              owned=source.startswith("upload:"))
        warnings = [{"file": w.file, "reason": w.reason} for w in parsed.warnings]
        imports.complete(url, import_id, parsed.detected, added, duplicates, warnings, len(parsed.items))
    except ImportCancelled:
        imports.finish(url, import_id, JobStatus.CANCELLED, CANCELLED_MESSAGE)
    except AppError as exc:
        imports.finish(url, import_id, JobStatus.FAILED, exc.message)
    except Exception as exc:  # a bug or an OS error: fail the job, never leave it running
        log.exception("Import %s failed", import_id)
        imports.finish(url, import_id, JobStatus.FAILED, f"Unexpected error: {_without_paths(exc, settings)}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
            return extract_zip(stage / _STAGED_ZIP, stage / "src", max_total_bytes=settings.max_upload_bytes)
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


def _stage_and_commit(url, workspace: Workspace, project_id, import_id, parsed, stage: Path, tracker,
                      owned: bool = False) -> tuple[int, int]:
    """`owned`: the source files are ours (an extracted upload), so they are moved, not copied."""
    with session_scope(url) as s:
        known = set(s.scalars(select(Image.sha256).where(Image.project_id == project_id)))
    staged_dir = stage / "images"
    staged_dir.mkdir(parents=True, exist_ok=True)
    rows, boxes, duplicates = [], [], 0
    for item in parsed.items:
        info = item.info
        if info.sha256 in known:
            duplicates += 1
            continue
        known.add(info.sha256)
        image_id = new_id("image")
        filename = image_id + _EXTENSIONS.get(info.format, Path(item.relpath).suffix.lower())
        store_image(item.source, staged_dir / filename, info, move=owned)
        rows.append({
            "id": image_id, "project_id": project_id, "filename": filename, "original_name": item.relpath,
            "sha256": info.sha256, "width": info.width, "height": info.height,
            "size_bytes": (staged_dir / filename).stat().st_size, "label": item.label,
            "subset_hint": item.subset_hint, "import_id": import_id, "created_at": utcnow(),
        })
        boxes += [{"image_id": image_id, "label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in item.boxes]
    tracker.check_cancel()
    # Commit: move files in, insert rows in one transaction; undo the moves if the insert fails.
    target = workspace.images_dir(project_id)
    target.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    try:
        for row in rows:
            dst = target / row["filename"]
            os.replace(staged_dir / row["filename"], dst)
            moved.append(dst)
        with session_scope(url) as s:
            if rows:
                s.execute(insert(Image), rows)
            if boxes:
                s.execute(insert(Box), boxes)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    return len(rows), duplicates


def recover_imports(app) -> None:
    """At start-up: an import cut off mid-run failed and left the dataset unchanged — unless its
    rows were committed (the process died just before closing the job), then it completed. Files
    it had staged or already moved into the dataset folder without rows are removed, and so is
    everything else in staging that no queued import owns (an upload cut off mid-stream, a
    try-one-image scratch folder). Queued imports run again, in order."""
    settings, workspace = app.state.settings, app.state.workspace
    with session_scope(settings.db_url) as s:
        swept, queued = imports.recover(s)
        for project_id in swept:
            _remove_unrecorded_images(s, workspace, project_id)
    if workspace.staging_dir.is_dir():
        for leftover in workspace.staging_dir.iterdir():
            if leftover.name not in queued:
                _remove(leftover)
    for import_id in queued:
        app.state.runner.submit("import", run_import, settings, import_id)


def _remove_unrecorded_images(session: Session, workspace: Workspace, project_id: str) -> None:
    """Dataset files without an image row: moved in by a commit that never reached the database."""
    folder = workspace.images_dir(project_id)
    if not folder.is_dir():
        return
    recorded = set(session.scalars(select(Image.filename).where(Image.project_id == project_id)))
    for path in folder.iterdir():
        if path.name not in recorded:
            log.warning("Removing %s: no image record (an import was cut off while committing)", path)
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- summary and browsing

def summary(session: Session, project_id: str) -> dict:
    project = get_project(session, project_id)
    images = session.execute(
        select(Image.id, Image.width, Image.height, Image.label).where(Image.project_id == project_id)
    ).all()
    box_rows = session.execute(
        select(Box.image_id, Box.label).join(Image, Image.id == Box.image_id).where(Image.project_id == project_id)
    ).all()
    boxes_per_class = Counter(label for _, label in box_rows)
    boxes_per_image = Counter(image_id for image_id, _ in box_rows)
    if project.task == "classification":
        class_counts = Counter(label for *_, label in images if label is not None)
        unlabeled = sum(1 for *_, label in images if label is None)
    else:
        per_image_classes: dict[str, set] = {}
        for image_id, label in box_rows:
            per_image_classes.setdefault(image_id, set()).add(label)
        class_counts = Counter(label for labels in per_image_classes.values() for label in labels)
        unlabeled = sum(1 for row in images if row[0] not in boxes_per_image)
    widths = [w for _, w, _, _ in images]
    heights = [h for _, _, h, _ in images]
    aspects = [w / h for _, w, h, _ in images if h]
    last = session.scalars(
        select(ImportJob).where(ImportJob.project_id == project_id).order_by(ImportJob.created_at.desc()).limit(1)
    ).first()
    warnings = []
    counts = sorted(class_counts.values())
    if len(counts) >= 2 and counts[0] and counts[-1] / counts[0] >= IMBALANCE_RATIO:
        warnings.append(
            f"Strong class imbalance: the largest class has {counts[-1] / counts[0]:.0f}x the images of the smallest; "
            "consider class-weighted loss or more images of the rare classes"
        )
    return {
        "project_id": project_id,
        "task": project.task,
        "image_count": len(images),
        "classes": [{"name": name, "images": n, "boxes": boxes_per_class.get(name, 0)} for name, n in sorted(class_counts.items())],
        "box_count": len(box_rows),
        "boxes_per_class": dict(sorted(boxes_per_class.items())),
        "boxes_per_image": _stats([boxes_per_image.get(row[0], 0) for row in images]) if project.task == "detection" else None,
        "width": _stats(widths),
        "height": _stats(heights),
        "aspect_ratio": _stats(aspects),
        "images_without_labels": unlabeled,
        "warnings": warnings,
        "last_import": import_public(last) if last else None,
    }


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "max": max(values), "mean": round(statistics.fmean(values), 3),
            "median": statistics.median(values)}


def list_images(session: Session, project_id: str, offset: int, limit: int, label: str | None = None,
                split_id: str | None = None, subset: str | None = None) -> tuple[list[dict], int]:
    project = get_project(session, project_id)
    query = select(Image).where(Image.project_id == project_id)
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
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.options(selectinload(Image.boxes)).order_by(Image.created_at, Image.id).offset(offset).limit(limit))
    return [image_public(r) for r in rows], total


def image_public(image: Image) -> dict:
    return {
        "id": image.id, "filename": image.filename, "original_name": image.original_name,
        "width": image.width, "height": image.height, "size_bytes": image.size_bytes, "label": image.label,
        "subset_hint": image.subset_hint, "sha256": image.sha256,
        "boxes": [{"label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in image.boxes],
        "url": f"/api/datasets/{image.project_id}/image/{image.filename}",
        "thumbnail_url": f"/api/datasets/{image.project_id}/thumbnail/{image.filename}",
    }


def get_image(session: Session, project_id: str, image_id: str) -> Image:
    return get_owned(session, Image, "image", project_id, image_id)


def delete_image(session: Session, workspace: Workspace, project_id: str, image_id: str) -> None:
    image = get_image(session, project_id, image_id)
    filename = image.filename
    session.execute(delete(Image).where(Image.id == image_id))
    session.commit()
    (workspace.images_dir(project_id) / filename).unlink(missing_ok=True)
    (workspace.thumbs_dir(project_id) / _thumb_name(filename)).unlink(missing_ok=True)


def _thumb_name(filename: str) -> str:
    return Path(filename).stem + ".jpg"


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


def thumbnail_file(session: Session, workspace: Workspace, project_id: str, filename: str) -> Path:
    source = image_file(session, workspace, project_id, filename)
    thumb = safe_join(workspace.thumbs_dir(project_id), _thumb_name(filename))
    if not thumb.is_file():
        thumb.parent.mkdir(parents=True, exist_ok=True)
        make_thumbnail(source, thumb)
    return thumb
