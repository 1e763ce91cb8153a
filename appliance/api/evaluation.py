"""`/api/evaluation` — run evaluations (fractional-GPU Ray tasks), metrics, per-sample results,
and "try one image"."""

from __future__ import annotations

import shutil
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from appliance.http.deps import ForceQ, LimitQ, OffsetQ, ProjectId, RunnerDep, SessionDep, SettingsDep, WorkspaceDep
from appliance.http.envelope import Envelope, Page, ok
from appliance.schemas import (
    Deleted, EvalSamplePublic, EvaluationDetailPublic, EvaluationPublic, PredictionPublic,
)
from appliance.store.errors import InvalidDataset, PayloadTooLarge, Unavailable, ValidationFailed
from appliance.services.ray_runtime import ray_is_up
from appliance.services import evaluation as service
from appliance.services.datasets import get_image
from appliance.services.evaluation import EvaluationRun
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/evaluation", tags=["evaluation"])


@router.get("/{project_id}", response_model=Envelope[list[EvaluationPublic]])
def list_evaluations(request: Request, project_id: ProjectId, session: SessionDep):
    """Evaluations with status, progress and headline metrics."""
    items = service.list_evaluations(session, project_id)
    if wants_fragment(request):
        return render(request, "fragments/evaluation_list.html", evaluations=items, project_id=project_id)
    return ok(items)


@router.post("/run", status_code=202, response_model=Envelope[EvaluationDetailPublic])
def run(body: EvaluationRun, session: SessionDep, settings: SettingsDep, workspace: WorkspaceDep, runner: RunnerDep):
    """Evaluate an experiment's checkpoint on a subset → 202; several may run at once."""
    service.check_request(session, workspace, body)
    if not ray_is_up():
        raise Unavailable("Ray is not reachable; evaluation runs on the Ray cluster")
    evaluation = service.request_evaluation(session, workspace, body)
    runner.submit("evaluation", service.launch, settings.db_url, str(settings.workspace), evaluation.id,
                  settings.eval_gpu_fraction)
    return ok(service.evaluation_public(session, evaluation))


@router.post("/{project_id}/predict", response_model=Envelope[PredictionPublic])
def predict(
    request: Request, project_id: ProjectId, session: SessionDep, settings: SettingsDep, workspace: WorkspaceDep,
    experiment_id: Annotated[str, Form()],
    checkpoint: Annotated[Literal["best", "last"], Form()] = "best",
    image_id: Annotated[str | None, Form()] = None,
    file: Annotated[UploadFile | None, File(description="An image to classify / detect")] = None,
):
    """Try one image (an upload or a dataset image) with an experiment, through the evaluation's inference code.
    A few run at once (`AISTUDIO_MAX_CONCURRENT_PREDICTIONS`), each waits at most `AISTUDIO_PREDICT_TIMEOUT_S`
    for its Ray task; beyond either, 503 with Retry-After."""
    from appliance.importers import UnreadableImage, probe_image

    exp, ckpt = service.trained_checkpoint(session, workspace, project_id, experiment_id, checkpoint)
    if (file is None) == (image_id is None):
        raise ValidationFailed("file: send exactly one of file (an upload) or image_id (a dataset image)")
    if not ray_is_up():
        raise Unavailable("Ray is not reachable; prediction runs on the Ray cluster")
    release = request.app.state.predict_slots.take(service.predictions_busy)
    scratch = workspace.staging_dir / f"try-{uuid.uuid4().hex}"
    try:
        scratch.mkdir(parents=True)
        if image_id is not None:
            image = get_image(session, project_id, image_id)
            path = workspace.images_dir(project_id) / image.filename
        else:
            path = scratch / "image"
            with path.open("wb") as out:
                written = 0
                while chunk := file.file.read(1 << 20):
                    written += len(chunk)
                    if written > settings.max_predict_image_bytes:
                        raise PayloadTooLarge(f"file: larger than {settings.max_predict_image_bytes} bytes "
                                              "(AISTUDIO_MAX_PREDICT_IMAGE_BYTES)")
                    out.write(chunk)
            try:
                info = probe_image(path, settings.max_image_pixels)
            except UnreadableImage as exc:
                raise InvalidDataset(f"file {file.filename}: unreadable image ({exc.reason})") from None
        result = service.predict_one(str(ckpt), str(path), settings.eval_gpu_fraction, settings.predict_timeout_s)
        width, height = (info.width, info.height) if image_id is None else (image.width, image.height)
        return ok({"experiment_id": experiment_id, "checkpoint": checkpoint, "image_id": image_id,
                   "width": width, "height": height, "classes": exp.class_names, **result})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release()


@router.get("/{project_id}/{evaluation_id}", response_model=Envelope[EvaluationDetailPublic])
def get_evaluation(project_id: ProjectId, evaluation_id: str, session: SessionDep):
    """Status and metrics: classification (accuracy, top-5, P/R/F1, confusion) or detection (COCO mAPs, PR curves…)."""
    return ok(service.evaluation_public(session, service.get_evaluation(session, project_id, evaluation_id)))


@router.get("/{project_id}/{evaluation_id}/samples", response_model=Envelope[Page[EvalSamplePublic]])
def samples(
    request: Request, project_id: ProjectId, evaluation_id: str, session: SessionDep,
    kind: Literal["errors", "all"] = "errors", label: str | None = None,
    cell: Annotated[str | None, Query(pattern=r"^[0-9]{1,9},[0-9]{1,9}$", description="confusion cell 'truth,prediction'")] = None,
    offset: OffsetQ = 0, limit: LimitQ = 48,
):
    """Per-image predictions, worst first."""
    parsed = tuple(int(v) for v in cell.split(",")) if cell else None
    items, total = service.list_samples(session, project_id, evaluation_id, kind, label, parsed, offset, limit)
    if wants_fragment(request):
        return render(request, "fragments/error_gallery.html", samples=items, total=total, offset=offset, limit=limit,
                      project_id=project_id, evaluation_id=evaluation_id, kind=kind, label=label or "", cell=cell or "")
    return ok(Page(items=items, total=total, offset=offset, limit=limit))


@router.delete("/{project_id}/{evaluation_id}", response_model=Envelope[Deleted])
def delete_evaluation(project_id: ProjectId, evaluation_id: str, session: SessionDep, workspace: WorkspaceDep,
                      force: ForceQ = False):
    """Remove an evaluation and its per-sample results; 409 while it runs (`?force=true` cancels it first)."""
    service.delete_evaluation(session, workspace, project_id, evaluation_id, force)
    return ok({"id": evaluation_id, "deleted": True})
