"""The persistence both sides share (the web app and the Ray jobs): database, tables, workspace paths,
ids, errors and job states. Imports neither FastAPI/Starlette nor Ray nor torch."""
