"""Alembic's environment: runs on the connection `appliance.store.db.migrate` passes in
(`config.attributes["connection"]`), or on `sqlalchemy.url` (`aistudio db revision` sets it)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.types import TypeDecorator

from appliance.store.tables import Base

config = context.config


def _render_item(kind, obj, autogen_context):
    """Revisions name plain SQLAlchemy types: tables.py's DateTime decorator only converts values."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def _run(connection) -> None:
    # Batch mode: SQLite alters a table by copying it, so revisions that change or drop columns work there too.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      compare_type=True, render_item=_render_item)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
