"""The schema upgrades of the releases before Alembic (frozen; never edit or append).

Those releases versioned the database with a `schema_version` table: each entry of MIGRATIONS upgraded
it by one version (v1 created the tables). `appliance.store.db.migrate` runs them only on a database
such a release made (it has `schema_version` and no `alembic_version`), up to LEGACY_HEAD, then stamps
Alembic's baseline revision, whose schema is exactly LEGACY_HEAD's, and writes HANDOFF_VERSION into
`schema_version`: a pre-Alembic appliance started on the database afterwards reads a version newer
than its own and refuses it, as those releases always did.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Connection, Index, MetaData, Table, func, inspect, select


class _Recorder:
    """Stands in for Alembic's `op` while the baseline revision's upgrade() runs: collects its tables."""

    def __init__(self) -> None:
        self.metadata = MetaData()

    def create_table(self, name, *items, **kw) -> None:
        Table(name, self.metadata, *items, **kw)

    def create_index(self, name, table, columns, unique=False) -> None:
        Index(name, *(self.metadata.tables[table].c[c] for c in columns), unique=unique)

    def bulk_insert(self, *args, **kw) -> None:
        pass

    @staticmethod
    def f(name: str) -> str:
        return name


@lru_cache(maxsize=1)
def frozen_schema() -> MetaData:
    """The schema at LEGACY_HEAD, as the baseline revision defines it: the tables the upgrades below
    create stay those of that version whatever tables.py becomes."""
    path = Path(__file__).parent / "migrations" / "versions" / "0001_baseline.py"
    spec = importlib.util.spec_from_file_location("_aistudio_baseline_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.op = recorder = _Recorder()
    module.upgrade()
    return recorder.metadata


def _create_v1(conn: Connection) -> None:
    frozen_schema().create_all(conn)


def _login_sessions(conn: Connection) -> None:
    # A new database got the table from v1's create_all already.
    frozen_schema().tables["login_sessions"].create(conn, checkfirst=True)


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
    frozen_schema().tables["deployments"].create(conn, checkfirst=True)


def _add_box_difficult(conn: Connection) -> None:
    """Boxes: `difficult`, Pascal VOC's flag for an object too hard to be required (issue #13 item 5):
    evaluation neither rewards nor penalises it. Skipped where v1 was just created with it."""
    if "difficult" not in {c["name"] for c in inspect(conn).get_columns("boxes")}:
        conn.exec_driver_sql("ALTER TABLE boxes ADD COLUMN difficult BOOLEAN NOT NULL DEFAULT FALSE")


# Frozen: the schema changes of the releases before Alembic. Never append here; a schema change is a
# new Alembic revision (appliance/store/migrations/versions/).
MIGRATIONS: list[Callable[[Connection], None]] = [
    _create_v1, _login_sessions, _add_run_claim_and_driver, _add_split_from_source, _add_run_seconds,
    _add_import_yaml_file, _add_image_phash, _deployments, _add_box_difficult,
]
LEGACY_HEAD = 9  # the last pre-Alembic version: the schema of Alembic's baseline revision
if len(MIGRATIONS) != LEGACY_HEAD:  # a schema change appended here instead of written as an Alembic revision
    raise RuntimeError("legacy_migrations.MIGRATIONS is frozen at 9 entries; write an Alembic revision instead")
# Written into `schema_version` once Alembic manages the database (by the baseline revision, or at the
# hand-over of an old database): larger than any version a pre-Alembic release knows, so it refuses.
HANDOFF_VERSION = 1000


def _schema_version() -> Table:
    return frozen_schema().tables["schema_version"]


def version(conn: Connection) -> int:
    """The `schema_version` of a database a pre-Alembic release made (0: none yet)."""
    return conn.execute(select(func.max(_schema_version().c.version))).scalar() or 0


def _record(conn: Connection, v: int) -> None:
    conn.execute(_schema_version().insert().values(version=v, applied_at=datetime.now(timezone.utc)))


def upgrade(conn: Connection) -> int:
    """Bring a pre-Alembic database (or an empty one) to LEGACY_HEAD as those releases did; return it."""
    current = version(conn) if inspect(conn).has_table("schema_version") else 0
    for v in range(current + 1, LEGACY_HEAD + 1):
        MIGRATIONS[v - 1](conn)
        _record(conn, v)
    return max(current, LEGACY_HEAD)


def hand_over(conn: Connection) -> None:
    """Mark the database as managed by Alembic (see HANDOFF_VERSION)."""
    _record(conn, HANDOFF_VERSION)
