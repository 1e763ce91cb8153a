"""Engine, sessions and schema versioning.

SQLite (the default) runs in WAL mode with foreign keys on. The schema is versioned: each
entry of MIGRATIONS upgrades the database by one version, so an upgrade never drops data.
Version 1 is the initial schema created from the ORM tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Connection, create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from appliance.store.tables import Base, Deployment, LoginSession, SchemaVersion


def _create_v1(conn: Connection) -> None:
    Base.metadata.create_all(conn)


def _login_sessions(conn: Connection) -> None:
    # A new database got the table from v1's create_all already.
    LoginSession.__table__.create(conn, checkfirst=True)


def _add_run_claim_and_driver(conn: Connection) -> None:
    """Experiments: `claim_id` (the claim a run's driver must still hold) and `ray_driver` (the Ray
    job or task driving it). Skipped where v1 was just created from tables that already have them."""
    have = {c["name"] for c in inspect(conn).get_columns("experiments")}
    for name, kind in (("claim_id", "VARCHAR(32)"), ("ray_driver", "VARCHAR(200)")):
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE experiments ADD COLUMN {name} {kind}")


def _add_split_from_source(conn: Connection) -> None:
    """Splits: `from_source`, a split that keeps the subsets the dataset was imported with (issue #13).
    Skipped where v1 was just created from tables that already have it."""
    if "from_source" not in {c["name"] for c in inspect(conn).get_columns("splits")}:
        conn.exec_driver_sql("ALTER TABLE splits ADD COLUMN from_source BOOLEAN NOT NULL DEFAULT FALSE")


def _add_run_seconds(conn: Connection) -> None:
    """Experiments: `run_seconds`, the training time of a run's ended attempts, so its duration keeps
    counting across resumes (issue #13, item 11). Skipped where v1 was just created with it."""
    if "run_seconds" not in {c["name"] for c in inspect(conn).get_columns("experiments")}:
        conn.exec_driver_sql("ALTER TABLE experiments ADD COLUMN run_seconds FLOAT NOT NULL DEFAULT 0")


def _add_import_yaml_file(conn: Connection) -> None:
    """Import jobs: `yaml_file`, the root YAML a YOLO import reads its class names from when the
    dataset has several (issue #13 item 4). Skipped where v1 was just created with it."""
    if "yaml_file" not in {c["name"] for c in inspect(conn).get_columns("import_jobs")}:
        conn.exec_driver_sql("ALTER TABLE import_jobs ADD COLUMN yaml_file VARCHAR(255)")


def _add_image_phash(conn: Connection) -> None:
    """Images: `phash`, the perceptual hash for near-duplicate checks (issue 13, item 7). Images
    imported before get theirs from a backfill at start-up (`services.health.backfill_phashes`)."""
    if "phash" not in {c["name"] for c in inspect(conn).get_columns("images")}:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN phash VARCHAR(16)")


def _deployments(conn: Connection) -> None:
    """Prediction endpoints (issue #16). A new database got the table from v1's create_all already."""
    Deployment.__table__.create(conn, checkfirst=True)


def _add_box_difficult(conn: Connection) -> None:
    """Boxes: `difficult`, Pascal VOC's flag for an object too hard to be required (issue #13 item 5):
    evaluation neither rewards nor penalises it. Skipped where v1 was just created with it."""
    if "difficult" not in {c["name"] for c in inspect(conn).get_columns("boxes")}:
        conn.exec_driver_sql("ALTER TABLE boxes ADD COLUMN difficult BOOLEAN NOT NULL DEFAULT FALSE")


# Append a function for each schema change; never edit a released entry.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _create_v1, _login_sessions, _add_run_claim_and_driver, _add_split_from_source, _add_run_seconds,
    _add_import_yaml_file, _add_image_phash, _deployments, _add_box_difficult,
]
SCHEMA_VERSION = len(MIGRATIONS)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> int:
    """Bring the schema up to SCHEMA_VERSION; return the version now in the database."""
    with engine.begin() as conn:
        current = 0
        if inspect(conn).has_table(SchemaVersion.__tablename__):
            current = conn.execute(select(func.max(SchemaVersion.version))).scalar() or 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"Database schema v{current} is newer than this AI Studio (v{SCHEMA_VERSION}); upgrade the appliance."
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(SchemaVersion.__table__.insert().values(version=version))
    return SCHEMA_VERSION


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
