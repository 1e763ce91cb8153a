"""Issue #15 item 3: Alembic migrations, on SQLite and on PostgreSQL.

- The models (appliance/store/tables.py) and the revisions agree: Alembic's autogenerate finds nothing
  to do on a database upgraded from scratch (CI fails when a column is added without a revision).
- A database made before Alembic (`schema_version`) is brought up to the last legacy version, stamped
  with the baseline, and marked so that a pre-Alembic appliance refuses it.
- A database at a revision this code does not know (a newer appliance wrote it) is refused with
  DATABASE_TOO_NEW, and nothing in it changes.
"""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, text
from typer.testing import CliRunner

from appliance.cli import cli
from appliance.config import get_settings
from appliance.main import create_app
from appliance.store import legacy_migrations as legacy
from appliance.store.db import BASELINE, alembic_config, current_revision, get_engine, head_revision, migrate
from appliance.store.errors import DatabaseTooNew
from appliance.store.tables import Base
from tests.pg import both_backends

pytestmark = both_backends  # each test that uses a database: on SQLite and on PostgreSQL

@pytest.fixture
def url(request, settings, database_url):
    """An empty database of the test's backend: a SQLite file, or a new PostgreSQL database."""
    if database_url is None:
        settings.workspace.mkdir(parents=True)
        yield settings.db_url
        return
    server = request.getfixturevalue("pg_server")
    bare = server.new_database(migrated=False)
    yield bare
    server.drop_database(bare)


@pytest.fixture
def run_cli(url, settings):
    """`aistudio …` on the test's database (get_settings is cached: cleared around each call)."""
    env = {"AISTUDIO_DATABASE_URL": url, "AISTUDIO_WORKSPACE": str(settings.workspace)}

    def run(*args: str):
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(cli, list(args), env=env)
        finally:
            get_settings.cache_clear()

    return run


def drift(conn, metadata: MetaData = Base.metadata) -> list:
    """What autogenerate would put in a new revision: [] when the models and the database agree."""
    return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


def snapshot(engine) -> dict:
    """Every table's columns and rows: to show that a refused start wrote nothing."""
    with engine.connect() as conn:
        insp = inspect(conn)
        return {t: ([c["name"] for c in insp.get_columns(t)],
                    sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{t}"')).all()), key=repr))
                for t in sorted(insp.get_table_names())}


def test_models_and_migrations_agree(url):
    engine = get_engine(url)
    assert migrate(engine) == head_revision()
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        diffs = drift(conn)
        assert not diffs, ("tables.py and the revisions disagree: write a revision (`aistudio db revision -m "
                           f"'what changed'`, see CONTRIBUTING.md) for {diffs}")
        # A pre-Alembic appliance reads a version newer than its own and refuses the database.
        assert legacy.version(conn) == legacy.HANDOFF_VERSION > legacy.LEGACY_HEAD


def test_the_agreement_check_sees_a_column_without_a_revision(url):
    """What CI reports when someone adds a column to tables.py and forgets the revision."""
    engine = get_engine(url)
    migrate(engine)
    models = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(models)
    models.tables["projects"].append_column(Column("colour", Integer, nullable=True))
    with engine.connect() as conn:
        [(op, _schema, table, column)] = drift(conn, models)
    assert (op, table, column.name) == ("add_column", "projects", "colour")


def test_one_head_and_the_baseline_first():
    """Two revisions written on parallel branches both revise the same parent: re-chain one before merging."""
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, script.get_heads()
    assert [r.revision for r in script.walk_revisions()][-1] == BASELINE


def test_a_database_from_before_alembic_is_handed_over(url):
    """A database at legacy version 6 (before `images.phash`) gets the legacy upgrades, the baseline's stamp
    and the hand-over mark, keeps its rows, and then agrees with the models."""
    engine = get_engine(url)
    with engine.begin() as conn:
        legacy.upgrade(conn)
        conn.execute(text("ALTER TABLE images DROP COLUMN phash"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 6"))
        conn.execute(text("INSERT INTO projects (id, name, task, description, created_at, updated_at) "
                          "VALUES ('p1', 'Old', 'classification', '', '2026-01-01', '2026-01-01')"))
    assert migrate(engine) == head_revision()
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert [v for (v,) in conn.execute(text("SELECT version FROM schema_version ORDER BY version"))] == \
            [*range(1, legacy.LEGACY_HEAD + 1), legacy.HANDOFF_VERSION]
        assert conn.execute(text("SELECT name FROM projects")).all() == [("Old",)]
        assert drift(conn) == []
    assert migrate(engine) == head_revision()  # the next start has nothing to do


def test_a_newer_database_is_refused_and_left_unchanged(url, settings, run_cli):
    engine = get_engine(url)
    migrate(engine)
    with engine.begin() as conn:  # as a newer appliance would leave it
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
        conn.execute(text("INSERT INTO projects (id, name, task, description, created_at, updated_at) "
                          "VALUES ('p1', 'Kept', 'classification', '', '2026-01-01', '2026-01-01')"))
    before = snapshot(engine)
    with pytest.raises(DatabaseTooNew) as refused:
        migrate(engine)
    assert refused.value.code == "DATABASE_TOO_NEW"
    assert "0099_from_the_future" in refused.value.message and "Upgrade the appliance" in refused.value.message
    assert snapshot(engine) == before
    # The appliance does not start on it; `aistudio db upgrade` says why and exits 1.
    settings.database_url = url
    with pytest.raises(DatabaseTooNew), TestClient(create_app(settings)):
        pass
    result = run_cli("db", "upgrade")
    assert result.exit_code == 1 and "DATABASE_TOO_NEW" in result.output, result.output
    assert snapshot(engine) == before


def test_a_newer_pre_alembic_version_is_refused(url):
    """`schema_version` above the last legacy version, and no Alembic revision: not ours either."""
    engine = get_engine(url)
    with engine.begin() as conn:
        legacy.upgrade(conn)
        conn.execute(text("INSERT INTO schema_version (version, applied_at) VALUES (10, '2026-01-01')"))
    before = snapshot(engine)
    with pytest.raises(DatabaseTooNew, match="version 10"):
        migrate(engine)
    assert snapshot(engine) == before


def test_db_commands(url, run_cli):
    result = run_cli("db", "current")
    assert result.exit_code == 1 and "not migrated" in result.output, result.output
    result = run_cli("db", "upgrade")
    assert result.exit_code == 0 and head_revision() in result.output, result.output
    result = run_cli("db", "current")
    assert result.exit_code == 0 and result.output.count(head_revision()) == 2, result.output
    with create_engine(url).connect() as conn:
        assert drift(conn) == []
