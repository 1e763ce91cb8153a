"""Engine, sessions and schema migrations.

SQLite (the default) runs in WAL mode with foreign keys on; PostgreSQL works the same through
`postgresql+psycopg://…`. The schema is versioned by Alembic (appliance/store/migrations/): `migrate`
upgrades the database to the newest revision at start-up, brings a database made before Alembic up
first (legacy_migrations.py), and refuses a database at a revision this code does not know (a newer
appliance wrote it) without writing anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from appliance.store import legacy_migrations as legacy
from appliance.store.errors import DatabaseTooNew
from appliance.store.tables import SchemaVersion

BASELINE = "0001_baseline"  # the revision whose schema is the last pre-Alembic version (legacy.LEGACY_HEAD)
# Key of the PostgreSQL advisory lock that serialises `migrate` between processes starting together.
_MIGRATE_LOCK = 0x41495354  # "AIST"


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_dumps(value) -> str:
    """JSON columns on every backend: NaN and ±infinity (a diverged loss, a metric of an empty class)
    become null. PostgreSQL's json refuses them, and so does the API's JSON encoder."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _without_nul(params):
    """A statement's parameters with each NUL character of a string written as the text `\\u0000`."""
    def clean(value):
        return value.replace("\x00", "\\u0000") if isinstance(value, str) else value

    if isinstance(params, dict):
        return {k: clean(v) for k, v in params.items()}
    return type(params)(clean(v) for v in params)


def _has_nul(params) -> bool:
    values = params.values() if isinstance(params, dict) else params
    return any(isinstance(v, str) and "\x00" in v for v in values)


def _storable_text(conn, cursor, statement, parameters, context, executemany):
    """PostgreSQL's text cannot hold NUL (SQLite's can). Bodies refuse it and importers skip labels with
    it; any other text that quotes user input (a detected layout, an error) keeps it as an escape, the
    same on every backend, as utf8_text does for lone surrogates."""
    if not parameters:
        return statement, parameters
    if executemany:
        if any(_has_nul(p) for p in parameters):
            parameters = [_without_nul(p) for p in parameters]
    elif _has_nul(parameters):
        parameters = _without_nul(parameters)
    return statement, parameters


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_serializer=json_dumps)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, json_serializer=json_dumps)
    event.listen(engine, "before_cursor_execute", _storable_text, retval=True)
    return engine


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration, without an alembic.ini: the scripts ship inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", "appliance.store:migrations")
    cfg.set_main_option("file_template", "%%(rev)s")  # `aistudio db revision` puts the slug in the id
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None: not managed by Alembic yet)."""
    return MigrationContext.configure(conn).get_current_revision()


def check_not_newer(conn: Connection) -> None:
    """Raise DatabaseTooNew if a newer appliance wrote this database's schema; reads only."""
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    unknown = [r for r in MigrationContext.configure(conn).get_current_heads() if r not in known]
    if unknown:
        raise DatabaseTooNew(
            f"The database's schema is at revision {', '.join(unknown)}, which this AI Studio does not know "
            f"(its newest is {head_revision()}): a newer AI Studio upgraded it. Upgrade the appliance; "
            "the database was left unchanged."
        )
    if not unknown and inspect(conn).has_table(SchemaVersion.__tablename__) and not current_revision(conn):
        found = legacy.version(conn)
        if found > legacy.LEGACY_HEAD:
            raise DatabaseTooNew(
                f"The database's schema is at version {found}, which this AI Studio does not know (it knows up to "
                f"{legacy.LEGACY_HEAD} before its migrations): upgrade the appliance; the database was left unchanged."
            )


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision; return it. A database made before Alembic is brought
    to the last legacy version, then stamped with the baseline. Raises DatabaseTooNew (nothing written)
    when the database is at a revision this code does not know."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # several replicas starting at once: one migrates at a time
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
        check_not_newer(conn)
        cfg = alembic_config(conn)
        if current_revision(conn) is None and inspect(conn).has_table(SchemaVersion.__tablename__):
            legacy.upgrade(conn)
            command.stamp(cfg, BASELINE)
            legacy.hand_over(conn)
        command.upgrade(cfg, "head")
    return head_revision()


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for jobs and scripts)."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
