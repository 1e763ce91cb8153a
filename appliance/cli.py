"""`aistudio` command line (Typer): run the appliance on a local Ray or a cluster."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

cli = typer.Typer(help="AI Studio: a self-hosted appliance for image models on Ray.", no_args_is_help=True)
app = cli  # the console-script entry point


@cli.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (AISTUDIO_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(help="HTTP port (AISTUDIO_PORT).")] = None,
    workspace: Annotated[Optional[Path], typer.Option(help="Workspace folder (AISTUDIO_WORKSPACE).")] = None,
) -> None:
    """Start (or join, with AISTUDIO_RAY_ADDRESS) Ray, deploy the app and serve until Ctrl-C."""
    for name, value in (("HOST", host), ("PORT", port), ("WORKSPACE", workspace)):
        if value is not None:
            os.environ[f"AISTUDIO_{name}"] = str(Path(value).resolve() if name == "WORKSPACE" else value)
    from appliance.config import get_settings
    from appliance.runtime import start_appliance, stop_appliance

    settings = get_settings()
    url = start_appliance(settings)
    typer.echo(f"AI Studio is running at {url}  (workspace {settings.workspace}; Ctrl-C to stop)")
    stop = threading.Event()

    def on_signal(*_) -> None:
        if stop.is_set():  # a second Ctrl-C / SIGTERM while stopping: leave now
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    stop.wait()
    typer.echo("Shutting down…")
    # Every step of stop_appliance is bounded; this is the last resort if one is not.
    watchdog = threading.Timer(settings.shutdown_timeout_s + FORCE_EXIT_AFTER_S, _force_exit)
    watchdog.daemon = True
    watchdog.start()
    stop_appliance(settings)
    watchdog.cancel()
    typer.echo("Stopped.")


FORCE_EXIT_AFTER_S = 2.0


def _force_exit() -> None:
    typer.echo("Shutdown did not finish in time; exiting anyway.", err=True)
    os._exit(1)


@cli.command("fetch-weights")
def fetch_weights(
    dest: Annotated[Optional[Path], typer.Option(help="Weights cache folder (AISTUDIO_WEIGHTS_DIR).")] = None,
    models: Annotated[Optional[list[str]], typer.Option("--model", help="Only these catalog models.")] = None,
    url: Annotated[Optional[str], typer.Option(help="Mirror base URL (AISTUDIO_WEIGHTS_URL).")] = None,
) -> None:
    """Download the catalog's pretrained weights into the cache (the image build; the Training page's
    "Download weights" does the same in the appliance)."""
    from appliance.config import get_settings
    from ray_jobs.core.catalog import MODELS, WeightsDownloadError, download_weights

    settings = get_settings()
    folder = (dest or settings.weights_cache).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in models or [] if m not in MODELS]
    if unknown:
        raise typer.BadParameter(f"unknown model {', '.join(unknown)}; valid: {', '.join(MODELS)}", param_hint="--model")
    shown: dict[str, int] = {}

    def progress(file: str, done: int, total: int | None) -> None:
        step = done // (25 << 20)  # a line every 25 MB
        if shown.get(file) != step:
            shown[file] = step
            typer.echo(f"  {file}: {done / 1e6:.0f}" + (f" / {total / 1e6:.0f} MB" if total else " MB"), err=True)

    for name in models or list(MODELS):
        try:
            path = download_weights(name, folder, base_url=url or settings.weights_url,
                                    verify=settings.weights_verify, progress=progress)
        except WeightsDownloadError as exc:
            typer.echo(f"{name}: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"{name}: {path}")


db = typer.Typer(help="The database schema: Alembic migrations (the appliance upgrades at start-up too).",
                 no_args_is_help=True)
cli.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database (AISTUDIO_DATABASE_URL) to this version's newest schema revision."""
    from appliance.config import get_settings
    from appliance.store.db import get_engine, migrate
    from appliance.store.errors import DatabaseTooNew

    settings = get_settings()
    settings.workspace.mkdir(parents=True, exist_ok=True)  # where the default SQLite file lives
    try:
        typer.echo(f"Database at revision {migrate(get_engine(settings.db_url))} (newest).")
    except DatabaseTooNew as exc:
        typer.echo(f"{exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from exc


@db.command("current")
def db_current() -> None:
    """Show the database's schema revision and this version's newest; exit 1 if they differ."""
    from appliance.config import get_settings
    from appliance.store.db import current_revision, get_engine, head_revision

    settings = get_settings()
    settings.workspace.mkdir(parents=True, exist_ok=True)
    with get_engine(settings.db_url).connect() as conn:
        current = current_revision(conn)
    head = head_revision()
    typer.echo(f"database: {current or 'none (not migrated by Alembic yet)'}\nnewest:   {head}")
    if current != head:
        raise typer.Exit(1)


@db.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the change does (the file's name).")],
) -> None:
    """For developers: write a new revision autogenerated from the difference between
    appliance/store/tables.py and the newest revision (review it before committing)."""
    import re
    import tempfile

    from alembic import command
    from alembic.script import ScriptDirectory

    from appliance.store.db import alembic_config, get_engine, migrate

    with tempfile.TemporaryDirectory() as scratch:
        engine = get_engine(f"sqlite:///{scratch}/scratch.db")
        migrate(engine)
        number = len(list(ScriptDirectory.from_config(alembic_config()).walk_revisions())) + 1
        # alembic_version.version_num is VARCHAR(32): "NNNN_" and at most 27 characters of the message
        slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:27].rstrip("_")
        with engine.begin() as conn:
            command.revision(alembic_config(conn), message=message, autogenerate=True, rev_id=f"{number:04d}_{slug}")
        engine.dispose()


if __name__ == "__main__":
    cli()
