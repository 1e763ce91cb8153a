"""`/api/training` — model catalog, experiments, run/stop, live SSE stream, logs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from appliance.http.deps import ProjectId, RunnerDep, SessionDep, SettingsDep, WorkspaceDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import Deleted, ExperimentDetailPublic, ExperimentPublic, ModelSpecPublic, StopRequested
from appliance.store.errors import Unavailable
from appliance.store.status import ACTIVE
from appliance.services.ray_runtime import ray_is_up
from appliance.services import training as service
from appliance.services.training import ExperimentCreate, RunRequest
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/training", tags=["training"])
POLL_S = 0.1
DB_CHECK_S = 2.0


@router.get("/models", response_model=Envelope[list[ModelSpecPublic]])
def models(task: Literal["classification", "detection"] | None = None):
    """Model catalog: name, task, parameter count, default image size."""
    return ok(service.catalog(task))


@router.get("/{project_id}/experiments", response_model=Envelope[list[ExperimentPublic]])
def list_experiments(request: Request, project_id: ProjectId, session: SessionDep):
    """Experiments with status and best metric."""
    items = service.list_experiments(session, project_id)
    if wants_fragment(request):
        return render(request, "fragments/experiment_list.html", experiments=items, project_id=project_id)
    return ok(items)


@router.post("/{project_id}/experiments", status_code=201, response_model=Envelope[ExperimentPublic])
def create_experiment(request: Request, project_id: ProjectId, body: ExperimentCreate, session: SessionDep,
                      settings: SettingsDep):
    """Create an experiment (hyperparameters checked against the model, split and dataset)."""
    exp = service.create_experiment(session, settings.weights_cache, project_id, body)
    if wants_fragment(request):
        return render(request, "fragments/experiment_list.html", status_code=201,
                      experiments=service.list_experiments(session, project_id), project_id=project_id)
    return ok(exp)


@router.get("/{project_id}/experiments/{experiment_id}", response_model=Envelope[ExperimentDetailPublic])
def get_experiment(project_id: ProjectId, experiment_id: str, session: SessionDep):
    """Record and per-epoch history."""
    return ok(service.experiment_public(session, service.get_experiment(session, project_id, experiment_id), True))


@router.delete("/{project_id}/experiments/{experiment_id}", response_model=Envelope[Deleted])
def delete_experiment(project_id: ProjectId, experiment_id: str, session: SessionDep, workspace: WorkspaceDep):
    """Delete an experiment and its checkpoints; 409 while it trains."""
    service.delete_experiment(session, workspace, project_id, experiment_id)
    return ok({"id": experiment_id, "deleted": True})


@router.post("/run", status_code=202, response_model=Envelope[ExperimentPublic])
def run(body: RunRequest, session: SessionDep, settings: SettingsDep, runner: RunnerDep):
    """Start (or resume / extend) a run → 202; 409 while another experiment trains."""
    if not ray_is_up():
        raise Unavailable("Ray is not reachable; training needs the Ray cluster")
    import ray

    from ray_jobs.events import get_event_bus

    bus = get_event_bus()
    exp = service.request_run(session, body, reset_events=lambda run_id: ray.get(bus.reset.remote(run_id)))
    runner.submit("training", service.launch, settings.db_url, exp.id, body.resume)
    return ok(service.experiment_public(session, exp))


@router.post("/{project_id}/experiments/{experiment_id}/stop", response_model=Envelope[StopRequested])
def stop(project_id: ProjectId, experiment_id: str, session: SessionDep):
    """Ask the run to stop after the current epoch; it keeps its last checkpoint (status `stopped`)."""
    exp = service.request_stop(session, project_id, experiment_id)
    return ok({"id": exp.id, "stop_requested": True})


@router.get("/{project_id}/experiments/{experiment_id}/logs", response_class=PlainTextResponse)
def logs(project_id: ProjectId, experiment_id: str, session: SessionDep, workspace: WorkspaceDep):
    """The run's log (its last 64 kB) as text."""
    exp = service.get_experiment(session, project_id, experiment_id)
    return PlainTextResponse(service.read_log(workspace, exp))


def _sse(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


def _last_epoch(last_event_id: str | None) -> int:
    """The epoch a reconnecting client has seen; 0 for an id that is not an epoch number. A number
    int() refuses (over 4300 digits) is past every epoch, like any other very large one."""
    if not (last_event_id and last_event_id.isascii() and last_event_id.isdigit()):
        return 0
    digits = last_event_id.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


SSE_DOC = {200: {"description": "Server-sent events (`text/event-stream`); `epoch_end` data is an EpochPublic",
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


@router.get("/{project_id}/experiments/{experiment_id}/stream", response_class=StreamingResponse, responses=SSE_DOC)
async def stream(
    request: Request, project_id: ProjectId, experiment_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
):
    """SSE: `status`, `epoch_end` (id = epoch), `log`, `complete`. History first; honours Last-Event-ID."""
    keepalive_s = request.app.state.settings.sse_keepalive_s
    sessions = request.app.state.sessions
    with sessions() as session:  # validate before the first yield: errors are envelopes, not empty 200s
        service.get_experiment(session, project_id, experiment_id)
    if not ray_is_up():
        raise Unavailable("Ray is not reachable; live events need the Ray cluster")
    from ray_jobs.events import get_event_bus

    bus = get_event_bus()
    # Our ids are epoch numbers; any other id (`abc`, `-1`, `²`) is ignored: the whole history is sent.
    sent = _last_epoch(last_event_id)

    def snapshot() -> tuple[str, list[dict], dict]:
        with sessions() as session:
            exp = service.get_experiment(session, project_id, experiment_id)
            return exp.status, service.history(session, exp.id), {"status": exp.status, "best_metric": exp.best_metric,
                                                                 "error": exp.error}

    async def events():
        nonlocal sent
        status, epochs, outcome = await asyncio.to_thread(snapshot)
        yield _sse("status", {"status": status})
        for ev in epochs:
            if ev["epoch"] > sent:
                sent = ev["epoch"]
                yield _sse("epoch_end", ev, ev["epoch"])
        if status not in ACTIVE:
            yield _sse("complete", outcome)
            return
        cursor, last_beat, last_db = 0, time.monotonic(), time.monotonic()
        while not await request.is_disconnected():
            batch = await bus.events_after.remote(experiment_id, cursor)
            for ev in batch:
                cursor = ev["seq"]
                data = ev["data"]
                if ev["type"] == "epoch_end":
                    if data["epoch"] <= sent:
                        continue
                    sent = data["epoch"]
                    yield _sse("epoch_end", data, data["epoch"])
                elif ev["type"] == "complete":
                    break
                else:
                    yield _sse(ev["type"], data)
            else:
                now = time.monotonic()
                if batch:
                    last_beat = now
                elif now - last_beat > keepalive_s:  # quiet for a while: proxies may cut an idle stream
                    last_beat = now
                    yield ": keep-alive\n\n"
                if now - last_db <= DB_CHECK_S:
                    await asyncio.sleep(POLL_S)
                    continue
                last_db = now  # the bus may miss a run that died: the database knows
            status, epochs, outcome = await asyncio.to_thread(snapshot)
            if status in ACTIVE:
                continue
            for ev in epochs:  # epochs are in the database before they are on the bus
                if ev["epoch"] > sent:
                    sent = ev["epoch"]
                    yield _sse("epoch_end", ev, ev["epoch"])
            yield _sse("complete", outcome)
            return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
