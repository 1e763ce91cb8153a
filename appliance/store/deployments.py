"""The deployment record (a live prediction endpoint, issue #16): creation, state changes, lookups.

Status: deploying → running | failed; `stopped` while an undeploy removes it. A record whose status
is `deploying` or `running` is served again when the appliance starts (services/deployments.py).
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.store.db import session_scope
from appliance.store.ids import new_id
from appliance.store.tables import Deployment

DEPLOYING, RUNNING, FAILED, STOPPED = "deploying", "running", "failed", "stopped"
LIVE = (DEPLOYING, RUNNING)  # serves (or is about to): blocks deleting its export or project


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    return "aisk_" + secrets.token_urlsafe(24)


def create(session: Session, *, project_id: str, export_id: str, name: str, min_replicas: int, max_replicas: int,
           gpu_fraction: float, max_batch_size: int, batch_wait_ms: float, auth: str) -> tuple[Deployment, str | None]:
    """Insert a `deploying` record; return it and the API key (None for `auth="none"`), which only this
    answer ever holds."""
    api_key = new_key() if auth == "key" else None
    row = Deployment(
        id=new_id("deployment"), project_id=project_id, export_id=export_id, name=name, status=DEPLOYING,
        min_replicas=min_replicas, max_replicas=max_replicas, gpu_fraction=gpu_fraction,
        max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, auth=auth,
        api_key_hash=hash_key(api_key) if api_key else None,
    )
    session.add(row)
    session.commit()
    return row, api_key


def by_name(session: Session, name: str) -> Deployment | None:
    return session.scalars(select(Deployment).where(Deployment.name == name)).first()


def live_for(session: Session, *, export_id: str | None = None, project_id: str | None = None) -> list[Deployment]:
    """Endpoints serving (or deploying) an export, or any export of a project."""
    query = select(Deployment).where(Deployment.status.in_(LIVE))
    if export_id is not None:
        query = query.where(Deployment.export_id == export_id)
    if project_id is not None:
        query = query.where(Deployment.project_id == project_id)
    return list(session.scalars(query.order_by(Deployment.name)))


def set_status(db_url: str, deployment_id: str, status: str, error: str | None = None,
               only_from: tuple[str, ...] | None = None) -> bool:
    """Move a record to `status` (only from `only_from` when given); False when it is gone or elsewhere."""
    with session_scope(db_url) as s:
        row = s.get(Deployment, deployment_id)
        if row is None or (only_from is not None and row.status not in only_from):
            return False
        row.status, row.error = status, error
        return True


def to_recover(db_url: str) -> list[str]:
    """Ids of the records that should be serving: redeployed at start-up."""
    with session_scope(db_url) as s:
        return list(s.scalars(select(Deployment.id).where(Deployment.status.in_(LIVE)).order_by(Deployment.created_at)))
