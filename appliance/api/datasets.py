"""`/api/datasets` — import (local path or ZIP upload), summary, browse, image files."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool
from pydantic import Field

from appliance.http.deps import ForceQ, LimitQ, OffsetQ, ProjectId, RunnerDep, SessionDep, SettingsDep, WorkspaceDep
from appliance.http.envelope import Envelope, Page, ok
from appliance.schemas import DatasetSummaryPublic, Deleted, ImagePublic, ImportJobPublic, StrictBody
from appliance.services import datasets as service
from appliance.services import thumbnails
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/datasets", tags=["datasets"])
ImportFormat = Literal["auto", "folder", "csv", "coco", "yolo"]
# Content-addressed names (one id per stored file) never change: cache them for good — in the
# user's own browser only (`private`): they may sit behind the API token.
IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}


class LocalImport(StrictBody):
    project_id: str
    source_path: str = Field(min_length=1, max_length=4096)
    format: ImportFormat = "auto"


def _accepted(request: Request, job):
    data = service.import_public(job)
    if wants_fragment(request):
        return render(request, "fragments/import_status.html", status_code=202, job=data)
    return ok(data)


@router.post("/import/local", status_code=202, response_model=Envelope[ImportJobPublic])
def import_local(request: Request, body: LocalImport, session: SessionDep, settings: SettingsDep, runner: RunnerDep):
    """Import from a folder on the server (under an allowed import root) → 202 import job."""
    job = service.start_local_import(session, settings, body.project_id, body.source_path, body.format)
    runner.submit("import", service.run_import, settings, job.id)
    return _accepted(request, job)


@router.post("/import/upload", status_code=202, response_model=Envelope[ImportJobPublic])
def import_upload(
    request: Request,
    project_id: Annotated[str, Form()],
    file: Annotated[UploadFile, File(description="A ZIP archive of the dataset")],
    session: SessionDep, settings: SettingsDep, workspace: WorkspaceDep, runner: RunnerDep,
    format: Annotated[ImportFormat, Form()] = "auto",
):
    """Import a ZIP upload (streamed to disk, size-limited, checked before extraction) → 202 import job."""
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    job = service.start_upload_import(session, settings, workspace, project_id, format, file, declared)
    runner.submit("import", service.run_import, settings, job.id)
    return _accepted(request, job)


@router.get("/{project_id}/imports/{import_id}", response_model=Envelope[ImportJobPublic])
def get_import(request: Request, project_id: ProjectId, import_id: str, session: SessionDep):
    """Import job: status, progress, counts, warnings."""
    job = service.get_import(session, project_id, import_id)
    if wants_fragment(request):
        return render(request, "fragments/import_status.html", job=service.import_public(job))
    return ok(service.import_public(job))


@router.delete("/{project_id}/imports/{import_id}", response_model=Envelope[ImportJobPublic])
def cancel_import(project_id: ProjectId, import_id: str, session: SessionDep):
    """Cancel a queued or running import; the dataset stays as it was."""
    return ok(service.import_public(service.cancel_import(session, project_id, import_id)))


@router.get("/{project_id}", response_model=Envelope[DatasetSummaryPublic])
def summary(request: Request, project_id: ProjectId, session: SessionDep):
    """Health report: counts, class histogram, boxes, image sizes, unlabeled images, warnings."""
    data = service.summary(session, project_id)
    if wants_fragment(request):
        return render(request, "fragments/dataset_summary.html", summary=data)
    return ok(data)


@router.get("/{project_id}/images", response_model=Envelope[Page[ImagePublic]])
def list_images(
    request: Request, project_id: ProjectId, session: SessionDep, offset: OffsetQ = 0, limit: LimitQ = 60,
    label: str | None = None, split_id: str | None = None, subset: Literal["train", "val", "test"] | None = None,
):
    """A page of images with annotations, filtered by label and split subset."""
    items, total = service.list_images(session, project_id, offset, limit, label, split_id, subset)
    if wants_fragment(request):
        return render(request, "fragments/image_grid.html", images=items, total=total, offset=offset, limit=limit,
                      project_id=project_id, label=label or "", split_id=split_id or "", subset=subset or "")
    return ok(Page(items=items, total=total, offset=offset, limit=limit))


@router.get("/{project_id}/images/{image_id}", response_model=Envelope[ImagePublic])
def get_image(project_id: ProjectId, image_id: str, session: SessionDep):
    """One image's record and annotations."""
    return ok(service.image_public(service.get_image(session, project_id, image_id)))


@router.delete("/{project_id}/images/{image_id}", response_model=Envelope[Deleted])
def delete_image(project_id: ProjectId, image_id: str, session: SessionDep, workspace: WorkspaceDep,
                 force: ForceQ = False):
    """Remove one image (file, thumbnail, annotations, split assignments); 409 naming the jobs
    reading it (`?force=true` stops them first)."""
    service.delete_image(session, workspace, project_id, image_id, force)
    return ok({"id": image_id, "deleted": True})


@router.get("/{project_id}/image/{filename}", response_class=FileResponse)
def image(project_id: ProjectId, filename: str, session: SessionDep, workspace: WorkspaceDep):
    """The stored image file."""
    return FileResponse(service.image_file(session, workspace, project_id, filename), headers=IMMUTABLE)


@router.get("/{project_id}/thumbnail/{filename}", response_class=FileResponse)
async def thumbnail(request: Request, project_id: ProjectId, filename: str, session: SessionDep,
                    settings: SettingsDep, workspace: WorkspaceDep):
    """A ≤256 px JPEG thumbnail, made at import and cached under `.thumbs/` (for older datasets: made on
    first request, a few at a time; a grey placeholder for an image over AISTUDIO_MAX_IMAGE_PIXELS)."""
    target = await run_in_threadpool(thumbnails.thumbnail_target, session, workspace, project_id, filename)
    limit = settings.max_image_pixels
    path = await thumbnails.ensure_thumbnail(thumbnails.slots_of(request.app.state, limit), target, limit)
    if path is None:
        return Response(thumbnails.placeholder(), media_type="image/jpeg", headers={"Cache-Control": "no-cache"})
    return FileResponse(path, headers=IMMUTABLE, media_type="image/jpeg")
