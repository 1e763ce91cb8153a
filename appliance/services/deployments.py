"""Deployments (issue #16): a completed export served as a live prediction endpoint at `/models/<name>`.

The record is the truth: created `deploying`, moved to `running` once Serve runs the endpoint's own
application (`ray_jobs.serving`), `failed` with Serve's message otherwise. Records that should be
serving are deployed again at start-up (`recover_deployments`), so endpoints come back after a restart.
Figures come from the replicas (through the metrics actor) and Serve's status, never from this process.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.schemas import StrictBody
from appliance.services.projects import get_owned, get_project
from appliance.services.ray_runtime import cluster_gpus, ray_is_up
from appliance.store import deployments as store
from appliance.store.db import session_scope
from appliance.store.errors import Conflict, NotFound, Unavailable, ValidationFailed
from appliance.store.exports import bundle_path
from appliance.store.ids import check_id
from appliance.store.paths import Workspace
from appliance.store.status import JobStatus
from appliance.store.tables import Deployment, Experiment, Export

log = logging.getLogger("aistudio.deploy")

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
MAX_IMAGE_BYTES = 20 * 1024**2  # one prediction request's image


class DeploymentCreate(StrictBody):
    project_id: str
    export_id: str
    name: str = Field(pattern=NAME_PATTERN, max_length=63,
                      description="Lowercase slug (a-z, 0-9, '-'); the URL is /models/<name>/predict")
    min_replicas: int = Field(default=1, ge=1, le=16)
    max_replicas: int = Field(default=1, ge=1, le=16)
    gpu_fraction: float = Field(default=0.0, ge=0, le=1, description="GPU share of each replica; 0 on CPU hosts")
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Dynamic batching: at most this many images")
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000, description="Dynamic batching: wait this long to fill a batch")
    auth: Literal["key", "none"] = "key"


def check_request(session: Session, workspace: Workspace, body: DeploymentCreate) -> Export:
    """Everything refused before a record exists; returns the export to serve."""
    if body.max_replicas < body.min_replicas:
        raise ValidationFailed(f"max_replicas: must be at least min_replicas ({body.min_replicas})")
    gpus = cluster_gpus()
    if body.gpu_fraction > 0 and gpus == 0:
        raise ValidationFailed("gpu_fraction: this cluster has no GPU; use 0 (the endpoint runs on CPUs)")
    taken = store.by_name(session, body.name)
    if taken is not None:
        raise Conflict(f"name: the endpoint name '{body.name}' is taken (deployment {taken.id}, {taken.status}); "
                       "choose another or undeploy it first")
    get_project(session, body.project_id)
    check_id("export", body.export_id)
    export = get_owned(session, Export, "export", body.project_id, body.export_id)
    if export.status != JobStatus.COMPLETED:
        raise Conflict(f"export_id: export {export.id} is {export.status}; only a completed export can be deployed")
    if not bundle_path(workspace, export).is_file():
        raise NotFound(f"export_id: the bundle of export {export.id} is missing from the workspace")
    if export.format == "tensorrt" and (gpus == 0 or body.gpu_fraction == 0):
        raise ValidationFailed("gpu_fraction: a TensorRT engine runs on a GPU only; give the endpoint a GPU share "
                               "(or deploy the ONNX export)")
    if not ray_is_up():
        raise Unavailable("Ray is not reachable; endpoints run on the Ray cluster")
    return export


def create(session: Session, body: DeploymentCreate) -> tuple[Deployment, str | None]:
    from sqlalchemy.exc import IntegrityError

    try:
        return store.create(session, **body.model_dump())
    except IntegrityError:  # two requests raced for the name
        session.rollback()
        raise Conflict(f"name: the endpoint name '{body.name}' is taken; choose another") from None


def get(session: Session, deployment_id: str) -> Deployment:
    check_id("deployment", deployment_id)
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise NotFound(f"Deployment {deployment_id} not found")
    return row


def _live_state(row: Deployment) -> tuple[dict | None, dict | None]:
    """Serve's view (replicas) and the replicas' figures; (None, None) without Ray."""
    if not ray_is_up():
        return None, None
    from ray_jobs import serving

    try:
        state = serving.state(row.name)
    except Exception:
        log.exception("Could not read Serve's status")
        state = None
    try:
        figures = serving.figures(row.name) if state is not None else None
    except Exception:
        log.exception("Could not read the figures of endpoint %s", row.name)
        figures = None
    return state, figures


EMPTY_FIGURES = {"requests": 0, "errors": 0, "p50_ms": None, "p99_ms": None, "rps": 0.0}


def to_public(session: Session, row: Deployment, live: bool = True) -> dict:
    export = session.get(Export, row.export_id)
    exp = session.get(Experiment, export.experiment_id) if export else None
    state, figures = _live_state(row) if live and row.status in store.LIVE else (None, None)
    return {
        "id": row.id, "project_id": row.project_id, "export_id": row.export_id, "name": row.name,
        "status": row.status, "url": f"/models/{row.name}/predict",
        "format": export.format if export else None, "model": exp.model if exp else None,
        "experiment_name": exp.name if exp else None,
        "task": _task(session, row.project_id),
        "min_replicas": row.min_replicas, "max_replicas": row.max_replicas, "gpu_fraction": row.gpu_fraction,
        "max_batch_size": row.max_batch_size, "batch_wait_ms": row.batch_wait_ms, "auth": row.auth,
        "replicas": {"running": state["running"] if state else 0,
                     "target": state["target"] if state else (row.min_replicas if row.status in store.LIVE else 0)},
        "metrics": figures or dict(EMPTY_FIGURES),
        "error": row.error, "created_at": row.created_at, "updated_at": row.updated_at,
    }


def _task(session: Session, project_id: str) -> str:
    return get_project(session, project_id).task


def list_deployments(session: Session, project_id: str | None) -> list[dict]:
    query = select(Deployment).order_by(Deployment.created_at.desc())
    if project_id is not None:
        check_id("project", project_id)
        get_project(session, project_id)
        query = query.where(Deployment.project_id == project_id)
    return [to_public(session, row) for row in session.scalars(query)]


def undeploy(session: Session, deployment_id: str) -> None:
    """Remove the endpoint's application (its URL then answers 404) and the record."""
    row = get(session, deployment_id)
    row.status = store.STOPPED
    session.commit()
    if ray_is_up():
        from ray_jobs import serving

        serving.undeploy(row.name)
    session.delete(row)
    session.commit()


def refuse_if_served(session: Session, what: str, *, export_id: str | None = None,
                     project_id: str | None = None) -> None:
    """409 naming the endpoints that serve an export (or any export of a project)."""
    live = store.live_for(session, export_id=export_id, project_id=project_id)
    if live:
        names = ", ".join(f"'{row.name}'" for row in live)
        raise Conflict(f"{what} is served by the endpoint {names}; undeploy it first (Deploy page)")


# ----------------------------------------------------------------------------- the job (runner lane "deploy")


ROUTE_WAIT_S = 30.0  # after Serve runs an endpoint, how long its route may take to reach it


def launch(db_url: str, workspace_root: str, deployment_id: str, cpus: float, timeout_s: float,
           recovering: bool = False, ingress_url: str | None = None) -> None:
    """Deploy the record's endpoint and wait until Serve runs it and (when `ingress_url` is given) its
    route answers there; the record ends running or failed."""
    try:
        _launch(db_url, workspace_root, deployment_id, cpus, timeout_s, recovering, ingress_url)
    except Exception as exc:  # never leave a record `deploying` for ever
        log.exception("Deploying %s failed", deployment_id)
        store.set_status(db_url, deployment_id, store.FAILED, f"The endpoint did not start: {exc}"[-2000:],
                         only_from=store.LIVE)


def _launch(db_url: str, workspace_root: str, deployment_id: str, cpus: float, timeout_s: float,
            recovering: bool, ingress_url: str | None) -> None:
    from pathlib import Path

    from ray_jobs import serving

    with session_scope(db_url) as s:
        row = s.get(Deployment, deployment_id)
        if row is None or row.status not in store.LIVE:
            return
        export = s.get(Export, row.export_id)
        config = {
            "name": row.name, "model": row.name, "api_key_hash": row.api_key_hash,
            "bundle": str(bundle_path(Workspace(Path(workspace_root)), export)),
            "max_batch_size": row.max_batch_size, "batch_wait_ms": row.batch_wait_ms,
            "gpu_fraction": row.gpu_fraction, "max_bytes": MAX_IMAGE_BYTES,
        }
        scaling = {"min_replicas": row.min_replicas, "max_replicas": row.max_replicas,
                   "gpu_fraction": row.gpu_fraction if cluster_gpus() > 0 else 0.0}
        name = row.name
    try:
        state = serving.state(name) if recovering else None
        if not (state and state["status"] == "RUNNING"):  # an ingress restart leaves running endpoints be
            serving.deploy(config, cpus=cpus, **scaling)
        serving.wait_running(name, timeout_s, stop=lambda: _gone(db_url, deployment_id))
        # `running` means a request to the URL the page shows reaches the model: wait for the ingress too.
        if ingress_url and not serving.wait_routed(name, ingress_url, ROUTE_WAIT_S,
                                                   stop=lambda: _gone(db_url, deployment_id)):
            log.warning("Endpoint %s runs, but %s did not route to it within %.0f s (or could not be probed)",
                        name, ingress_url, ROUTE_WAIT_S)
    except Exception as exc:
        log.warning("Endpoint %s failed to start: %s", name, exc)
        store.set_status(db_url, deployment_id, store.FAILED, f"The endpoint did not start: {exc}"[-2000:],
                         only_from=store.LIVE)
        return
    if not store.set_status(db_url, deployment_id, store.RUNNING, only_from=store.LIVE):
        if _gone(db_url, deployment_id):  # undeployed while it started
            serving.undeploy(name)


def _gone(db_url: str, deployment_id: str) -> bool:
    with session_scope(db_url) as s:
        row = s.get(Deployment, deployment_id)
        return row is None or row.status not in store.LIVE


def submit(app_state, deployment_id: str, recovering: bool = False) -> None:
    settings = app_state.settings
    app_state.runner.submit("deploy", launch, settings.db_url, str(settings.workspace), deployment_id,
                            settings.endpoint_cpus, settings.endpoint_start_timeout_s, recovering,
                            settings.local_url)


def recover_deployments(app) -> None:
    """At start-up: every record that should be serving is deployed again (after an appliance restart the
    Ray cluster is new and holds no endpoint); one still running in Serve is only marked running."""
    ids = store.to_recover(app.state.settings.db_url)
    if ids and not ray_is_up():
        log.warning("Ray is not reachable: %d endpoint(s) not redeployed", len(ids))
        return
    for deployment_id in ids:
        submit(app.state, deployment_id, recovering=True)
