"""Browser sign-in sessions (token mode): rows keyed by the SHA-256 of the session id.

Signing the cookie is the web side's job (appliance/http/auth.py); this module only stores,
finds and deletes sessions by the id's hash, and purges expired rows.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from appliance.store.tables import LoginSession, utcnow


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def create(session: Session, session_id: str, max_age_s: int) -> LoginSession:
    """Store a new session (and drop expired ones, so the table never grows without bound)."""
    now = utcnow()
    session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
    row = LoginSession(id_hash=id_hash(session_id), created_at=now, expires_at=now + timedelta(seconds=max_age_s))
    session.add(row)
    session.commit()
    return row


def is_valid(session: Session, session_id: str) -> bool:
    """True while the session exists and has not expired."""
    found = session.scalar(select(LoginSession.expires_at).where(LoginSession.id_hash == id_hash(session_id)))
    return found is not None and found > utcnow()


def delete_session(session: Session, session_id: str) -> bool:
    """Remove a session (logout); True when there was one."""
    result = session.execute(delete(LoginSession).where(LoginSession.id_hash == id_hash(session_id)))
    session.commit()
    return bool(result.rowcount)
