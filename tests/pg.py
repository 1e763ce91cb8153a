"""A throwaway PostgreSQL server for the test session (issue #15 item 3).

`PgServer.start()` runs Debian's `initdb` into a temp folder owned by the `postgres` user (the tests run
as root here; PostgreSQL refuses to run as root), starts `postgres` on a free port of 127.0.0.1 with
its unix socket in that folder, and `stop()` shuts it down by its pid and removes the folder. Each test
gets a fresh database (`new_database`), copied from a template that is already migrated, so nothing
leaks between tests and no test pays for the migrations. scripts/test.sh installs the server where
`initdb` is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from itertools import count
from pathlib import Path

import pytest

from tests.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15
TEMPLATE = "aistudio_template"


def missing() -> str | None:
    """Why the PostgreSQL tests cannot run here (None: they can)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found ({PG_BIN}/initdb): apt-get install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


class PgServer:
    def __init__(self) -> None:
        # As root the server runs as `postgres`; as anyone else, as that user.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="aistudio-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._names = count(1)

    def _as_server_user(self) -> dict:
        return {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid} if self.user else {}

    def start(self) -> PgServer:
        data = self.root / "data"
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        log = self.root / "initdb.log"
        with open(log, "wb") as out:
            done = subprocess.run([PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                   "--locale=C", "--no-sync"], stdout=out, stderr=subprocess.STDOUT,
                                  cwd=self.root, **self._as_server_user())
        if done.returncode:
            raise RuntimeError(f"initdb failed: {log.read_text()[-2000:]}")
        # Durability off: a test database is thrown away anyway, and fsyncs cost seconds on a shared disk.
        self._log = open(self.root / "server.log", "wb")
        self.proc = subprocess.Popen(
            [PG_BIN / "postgres", "-D", data, "-p", str(self.port), "-k", self.root, "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root,
            start_new_session=True, **self._as_server_user(),
        )
        self._wait_ready()
        self._admin(f"CREATE DATABASE {TEMPLATE}")
        from appliance.store.db import get_engine, migrate

        engine = get_engine(self.url(TEMPLATE))
        migrate(engine)
        engine.dispose()  # a template may have no connections while it is copied
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, migrated: bool = True) -> str:
        """The URL of a new, empty database: at the newest revision (copied from the template), or bare."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {TEMPLATE}" if migrated else ""))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        from appliance.store.db import get_engine

        get_engine(url).dispose()
        self._admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # "fast" shutdown: ends sessions, then exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGQUIT)  # "immediate"
                self.proc.wait(timeout=30)
        if self._log:
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


# A test (or module, `pytestmark = both_backends`) so marked runs on SQLite and on a fresh database of the
# session's PostgreSQL server, where it uses the database (`database_url`, hence `settings` and `client`):
# tests/conftest.py's pytest_generate_tests parametrizes it.
both_backends = pytest.mark.both_backends
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
