"""`/api/weights` — which catalog models have pretrained weights in the cache; download them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from appliance.http.deps import SettingsDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import Task, WeightsFetch, WeightsPublic
from appliance.services import weights as service

router = APIRouter(prefix="/api/weights", tags=["training"])


def _downloads(request: Request) -> service.WeightsDownloads:
    state = request.app.state
    if getattr(state, "weights_downloads", None) is None:
        state.weights_downloads = service.WeightsDownloads()
    return state.weights_downloads


@router.get("", response_model=Envelope[WeightsPublic])
def weights_status(request: Request, settings: SettingsDep, task: Task | None = None):
    """Per model: is its weights file in the cache; and the latest download's progress."""
    return ok(service.status(settings, _downloads(request), task))


@router.post("", response_model=Envelope[WeightsPublic], status_code=202)
def fetch_weights(request: Request, settings: SettingsDep, body: WeightsFetch):
    """Download the missing weights files in the background (as `aistudio fetch-weights` does; `{}`: every
    model); 409 while one runs."""
    downloads = _downloads(request)
    service.start(settings, request.app.state.runner, downloads, request.app.state.stopping, body.models)
    return ok(service.status(settings, downloads))
