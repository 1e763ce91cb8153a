"""`/api/datasets` — import (local path or ZIP upload), summary, browse, image files."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from appliance.http.deps import ForceQ, LimitQ, OffsetQ, ProjectId, RunnerDep, SessionDep, SettingsDep, WorkspaceDep
from appliance.http.envelope import CursorPage, Envelope, ok
from appliance.http.uploads import StreamedForm, receive_file_form
from appliance.schemas import DatasetSummaryPublic, Deleted, ImagePublic, ImportJobPublic, StrictBody
from appliance.services import datasets as service
from appliance.services import thumbnails
from appliance.store.ids import check_id
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/datasets", tags=["datasets"])
YAML_FILE_HELP = ("YOLO: the name of the YAML file at the dataset root that holds the class names "
                  "(e.g. coco8.yaml), needed when several root YAML files have `names`")
ImportFormat = Literal["auto", "folder", "csv", "coco", "yolo", "voc"]
HealthIssue = Literal["near_duplicate", "tiny", "huge", "extreme_aspect", "degenerate_boxes"]  # health.ISSUES
# Content-addressed names (one id per stored file) never change: cache them for good — in the
# user's own browser only (`private`): they may sit behind the API token.
IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}
ThumbVersionQ = Annotated[str | None, Query(max_length=64, pattern=r"^[0-9a-f]+$",
                                            description="The image's content version (cache key); any value serves")]


class LocalImport(StrictBody):
    project_id: str
    source_path: str = Field(min_length=1, max_length=4096)
    format: ImportFormat = "auto"
    yaml_file: str | None = Field(None, max_length=255, description=YAML_FILE_HELP)


def _accepted(request: Request, job, data: dict | None = None):
    data = data if data is not None else service.import_public(job)
    if wants_fragment(request):
        return render(request, "fragments/import_status.html", status_code=202, job=data)
    return ok(data)


@router.post("/import/local", status_code=202, response_model=Envelope[ImportJobPublic])
def import_local(request: Request, body: LocalImport, session: SessionDep, settings: SettingsDep, runner: RunnerDep):
    """Import from a folder on the server (under an allowed import root) → 202 import job."""
    job = service.start_local_import(session, settings, body.project_id, body.source_path, body.format,
                                     body.yaml_file)
    runner.submit("import", service.run_import, settings, job.id)
    return _accepted(request, job)


class UploadFields(BaseModel):
    """The text fields of the upload form (the file part is streamed, not held)."""

    project_id: str
    format: ImportFormat = "auto"
    yaml_file: str | None = Field(None, max_length=255)


# The form as FastAPI would describe it: the route reads the body itself (see receive_file_form).
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "title": "Body_import_upload_api_datasets_import_upload_post", "type": "object",
    "required": ["project_id", "file"],
    "properties": {
        "project_id": {"type": "string", "title": "Project Id"},
        "file": {"type": "string", "contentMediaType": "application/octet-stream", "title": "File",
                 "description": "A ZIP archive of the dataset"},
        "format": {"type": "string", "enum": list(get_args(ImportFormat)), "title": "Format", "default": "auto"},
        "yaml_file": {"type": "string", "maxLength": 255, "title": "Yaml File", "description": YAML_FILE_HELP},
    },
}}}}}


def _upload_fields(form: StreamedForm) -> UploadFields:
    """422 naming each bad field, as FastAPI's own form validation would."""
    errors = [{"type": "value_error", "loc": ("body", name), "msg": "expected text, got a file", "input": None}
              for name in sorted(form.file_parts - {"file"}) if name in UploadFields.model_fields]
    if form.filename is None:
        if "file" in form.fields:
            errors.append({"type": "value_error", "loc": ("body", "file"), "input": None,
                           "msg": "expected a file (a ZIP archive), got a text field"})
        else:
            errors.append({"type": "missing", "loc": ("body", "file"), "msg": "Field required", "input": None})
    fields = {k: v for k, v in form.fields.items() if k in UploadFields.model_fields and k not in form.file_parts}
    try:
        parsed = UploadFields.model_validate(fields)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()
                  if e["loc"] and e["loc"][0] not in form.file_parts] + errors
        parsed = None
    if errors:
        raise RequestValidationError(errors)
    return parsed


@router.post("/import/upload", status_code=202, response_model=Envelope[ImportJobPublic], openapi_extra=UPLOAD_BODY)
async def import_upload(
    request: Request, session: SessionDep, settings: SettingsDep, workspace: WorkspaceDep, runner: RunnerDep,
):
    """Import a ZIP upload (streamed straight to the import's staging file, size-limited while it
    arrives, checked before extraction) → 202 import job."""
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    # The queue cap (429) and the free disk for a declared size (507), before a byte is written.
    await run_in_threadpool(service.admit_import, session, settings, workspace, declared)
    import_id, archive = service.new_upload_stage(workspace)
    try:
        async def before_file(fields: dict[str, str]) -> None:
            # project_id usually comes first (the page's form, curl -F in order): refuse an unknown
            # project before the archive is received, not after.
            if isinstance(fields.get("project_id"), str):
                await run_in_threadpool(service.check_upload_project, session, fields["project_id"])

        form = await receive_file_form(request, "file", archive, settings.max_upload_bytes,
                                       too_large=lambda: service.upload_too_large(settings.max_upload_bytes),
                                       before_file=before_file)
        fields = _upload_fields(form)
        job, data = await run_in_threadpool(_queue_upload, session, settings, workspace, fields, import_id,
                                            form.filename)
    except BaseException:
        service.discard_stage(workspace, import_id)
        raise
    runner.submit("import", service.run_import, settings, job.id)
    return _accepted(request, job, data)


def _queue_upload(session, settings, workspace, fields: UploadFields, import_id: str, filename: str | None):
    """In a worker thread: the database work of an upload (the route itself is async)."""
    job = service.queue_staged_upload(session, settings, workspace, fields.project_id, fields.format, import_id,
                                      filename or "", fields.yaml_file)
    return job, service.import_public(job)


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
def summary(request: Request, project_id: ProjectId, session: SessionDep, settings: SettingsDep):
    """Health report: counts, class histogram, boxes, image sizes, unlabeled images, near-duplicates and
    the other health checks (`health`), warnings."""
    data = service.summary(session, project_id, settings.near_duplicate_distance)
    if wants_fragment(request):
        return render(request, "fragments/dataset_summary.html", summary=data)
    return ok(data)


CursorQ = Annotated[str | None, Query(max_length=200, description="The `next_cursor` of the previous page (keyset "
                                       "pagination; leave out for the first page; not with offset)")]
LabelQ = Annotated[str | None, Query(max_length=200, description="Class: the image's label, or a box's (detection)")]


@router.get("/{project_id}/images", response_model=Envelope[CursorPage[ImagePublic]])
def list_images(
    request: Request, project_id: ProjectId, session: SessionDep, settings: SettingsDep, offset: OffsetQ = 0,
    limit: LimitQ = 60, label: LabelQ = None, split_id: str | None = None,
    subset: Literal["train", "val", "test"] | None = None, issue: HealthIssue | None = None, cursor: CursorQ = None,
):
    """A page of images with annotations, in import order, filtered by label, split subset and health
    issue; `next_cursor` gives the next page (keyset), `offset` still works."""
    page = service.list_images(session, project_id, offset, limit, label, split_id, subset, issue,
                               settings.near_duplicate_distance, cursor, with_position=wants_fragment(request))
    if wants_fragment(request):
        at = page.position if page.position is not None else offset
        return render(request, "fragments/image_grid.html", images=page.items, total=page.total, offset=at,
                      limit=limit, project_id=project_id, label=label or "", split_id=split_id or "",
                      subset=subset or "", issue=issue or "", next_cursor=page.next_cursor, cursor=cursor or "", prev_cursor=page.prev_cursor,
                      paging="offset" if offset else "cursor")
    return ok(CursorPage(items=page.items, total=page.total, offset=offset, limit=limit, next_cursor=page.next_cursor))


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
async def thumbnail(request: Request, project_id: Annotated[str, PathParam(description="proj-…")], filename: str,
                    v: ThumbVersionQ = None):
    """A ≤256 px JPEG thumbnail, made at import and cached under `.thumbs/`: served as a static file
    (no database, no decode; `?v=` is the image's content version, so it is cached for good, with an
    ETag and 304). For older datasets it is made on first request, a few at a time; a grey
    placeholder for an image over AISTUDIO_MAX_IMAGE_PIXELS."""
    # No dependencies: FastAPI runs sync ones in the thread pool, three hops per thumbnail.
    check_id("project", project_id)
    settings, workspace = request.app.state.settings, request.app.state.workspace
    cached = thumbnails.read_cached(workspace, project_id, filename)
    headers = {"Cache-Control": thumbnails.cache_control(settings.api_token is not None)}
    if cached is None:  # not made yet, or not a plain file of this project: the checked, lazy path
        target = await run_in_threadpool(_thumbnail_target, request, workspace, project_id, filename)
        limit = settings.max_image_pixels
        path = await thumbnails.ensure_thumbnail(thumbnails.slots_of(request.app.state, limit), target, limit)
        if path is None:
            return Response(thumbnails.placeholder(), media_type="image/jpeg", headers={"Cache-Control": "no-cache"})
        cached = thumbnails.read_cached(workspace, project_id, filename)
        if cached is None:
            return FileResponse(path, headers=headers, media_type="image/jpeg")
    body, etag = cached
    headers["ETag"] = etag
    if thumbnails.etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="image/jpeg", headers=headers)


def _thumbnail_target(request: Request, workspace, project_id: str, filename: str):
    """The lazy path's database check (only an image row of this project gets a thumbnail made)."""
    with request.app.state.sessions() as session:
        return thumbnails.thumbnail_target(session, workspace, project_id, filename)
