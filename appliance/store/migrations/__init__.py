"""Alembic migrations of the AI Studio database (env.py, versions/). `appliance.store.db.migrate` runs them
at start-up; `aistudio db revision -m "…"` writes a new one. See docs/architecture.md, "Schema changes"."""
