"""`/api/training` — model catalog, experiments, run/stop, live SSE stream, logs."""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from appliance.http.deps import ForceQ, ProjectId, RunnerDep, SessionDep, SettingsDep, WorkspaceDep
from appliance.http.envelope import Envelope, ok
from appliance.schemas import Deleted, ExperimentDetailPublic, ExperimentPublic, ModelSpecPublic, StopRequested
from appliance.store.errors import TooManyRequests, Unavailable
from appliance.store.status import ACTIVE
from appliance.services.ray_runtime import ray_is_up
from appliance.services import training as service
from appliance.services.run_feed import Feeds
from appliance.services.training import ExperimentCreate, RunRequest
from appliance.web import render, wants_fragment

router = APIRouter(prefix="/api/training", tags=["training"])
MIN_WAIT_S = 0.05
STREAM_RETRY_AFTER_S = 5


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
def delete_experiment(project_id: ProjectId, experiment_id: str, session: SessionDep, workspace: WorkspaceDep,
                      force: ForceQ = False):
    """Delete an experiment with its checkpoints, evaluations and exports; 409 naming the one of
    them that runs (`?force=true` stops them first)."""
    service.delete_experiment(session, workspace, project_id, experiment_id, force)
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
    runner.submit("training", service.launch, settings.db_url, exp.id, body.resume, exp.claim_id)
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
    """SSE: `status`, `epoch_end` (id = epoch), `log`, `complete`. History first; honours Last-Event-ID.
    At most `AISTUDIO_MAX_SSE_STREAMS` streams are open at once (429 with Retry-After beyond); streams end
    when the server stops (the browser reconnects with Last-Event-ID)."""
    state = request.app.state
    keepalive_s = state.settings.sse_keepalive_s
    sessions = state.sessions
    if state.stopping.is_set():
        raise Unavailable("The server is stopping; reconnect shortly", retry_after_s=STREAM_RETRY_AFTER_S)
    release = state.sse_slots.take(_too_many_streams)

    def snapshot() -> tuple[str, list[dict], dict]:
        with sessions() as session:
            exp = service.get_experiment(session, project_id, experiment_id)
            return exp.status, service.history(session, exp.id), {"status": exp.status, "best_metric": exp.best_metric,
                                                                 "error": exp.error}

    def opening():
        # Validate before the first yield (errors are envelopes, not empty 200s), in a thread: the
        # database and Ray calls block.
        first = snapshot()
        if not ray_is_up():
            raise Unavailable("Ray is not reachable; live events need the Ray cluster")
        from ray_jobs.events import get_event_bus

        return first, get_event_bus() if first[0] in ACTIVE else None

    try:
        (status, epochs, outcome), bus = await run_in_threadpool(opening)
    except BaseException:
        release()
        raise
    # Our ids are epoch numbers; any other id (`abc`, `-1`, `²`) is ignored: the whole history is sent.
    sent = _last_epoch(last_event_id)

    async def events():
        nonlocal sent
        try:
            yield _sse("status", {"status": status})
            for ev in epochs:
                if ev["epoch"] > sent:
                    sent = ev["epoch"]
                    yield _sse("epoch_end", ev, ev["epoch"])
            if status not in ACTIVE:
                yield _sse("complete", outcome)
                return
            feed = _feeds(state).subscribe(experiment_id, bus, snapshot)
            try:
                seen, last_beat = 0, time.monotonic()
                while not state.stopping.is_set() and not await request.is_disconnected():
                    news, seen = feed.since(seen)
                    for ev in news:
                        data = ev["data"]
                        if ev["type"] == "epoch_end":
                            if data["epoch"] <= sent:
                                continue
                            sent = data["epoch"]
                            yield _sse("epoch_end", data, data["epoch"])
                        elif ev["type"] != "complete":  # the database says when the run ended (feed.final)
                            yield _sse(ev["type"], data)
                    now = time.monotonic()
                    if news:
                        last_beat = now
                    if feed.final is not None:
                        for ev in feed.final[1]:  # epochs are in the database before they are on the bus
                            if ev["epoch"] > sent:
                                sent = ev["epoch"]
                                yield _sse("epoch_end", ev, ev["epoch"])
                        yield _sse("complete", feed.final[2])
                        return
                    if feed.broken:
                        return
                    if now - last_beat > keepalive_s:  # quiet for a while: proxies may cut an idle stream
                        last_beat = now
                        yield ": keep-alive\n\n"
                    # Woken by the feed: new events, the run's end, or the app stopping (the feed watches the flag).
                    await feed.wait(max(MIN_WAIT_S, keepalive_s - (now - last_beat)))
            finally:
                _feeds(state).unsubscribe(feed)
        finally:
            release()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    # The slot is released when the stream ends, or (background) when it never started.
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers,
                             background=BackgroundTask(release))


def _too_many_streams(limit: int) -> TooManyRequests:
    return TooManyRequests(f"Too many live streams are open ({limit}, AISTUDIO_MAX_SSE_STREAMS); close a page "
                           "or retry later", retry_after_s=STREAM_RETRY_AFTER_S)


def _feeds(state) -> Feeds:
    feeds = getattr(state, "feeds", None)
    if feeds is None:  # the event loop is the only user: no race
        feeds = state.feeds = Feeds(state.stopping)
    return feeds
