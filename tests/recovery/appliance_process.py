"""The appliance as a real, separate process (`python -m appliance.cli serve`) that a test can
kill -9 together with the local Ray it started, and start again on the same workspace.

The process is started in its own session; Ray's processes (GCS, raylet, dashboard, workers,
Serve) are its descendants and stay in that session. They also carry the cluster's own Ray temp
folder (`RAY_TMPDIR`) in their command lines, so a process that left the session would still be
found. Only those processes are ever signalled, one pid at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, session) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class _ExitedEarly(AssertionError):
    pass


class ApplianceProcess:
    """One workspace; `start()` / `kill()` as often as needed (fresh ports and a fresh Ray each time).

    `cpus` fixes the CPU count the local Ray declares (RAY_OVERRIDE_RESOURCES), and no GPU, so
    which tasks can run at once does not depend on the host. `env` adds settings (`AISTUDIO_*`)."""

    def __init__(self, root: Path, import_root: Path, cpus: int, env: dict[str, str] | None = None):
        self.root, self.import_root, self.cpus = root, import_root, cpus
        self.extra_env = dict(env or {})  # more settings (AISTUDIO_*) for the appliance
        self.workspace = root / "ws"
        # Short: Ray's socket paths live below it and a Unix socket path has ~107 characters.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="aisr-", dir="/tmp"))
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None  # pid of the last started appliance: its session id
        self.url = ""
        self.log_path = root / "appliance.log"
        self.starts = 0

    # ------------------------------------------------------------ start

    def start(self, timeout: float = 300, attempts: int = 3) -> httpx.Client:
        """Start and wait until healthy. On a loaded host a local Ray can fail to come up (its
        raylet has 30 s to register); the appliance then exits before serving anything, and
        another attempt is made."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start(timeout)
            except _ExitedEarly:
                if attempt == attempts:
                    raise

    def _start(self, timeout: float) -> httpx.Client:
        assert self.proc is None, "already running"
        self.starts += 1
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AISTUDIO_", "RAY_"))}
        env.update({
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "AISTUDIO_IMPORT_ROOTS": str(self.import_root),
            "AISTUDIO_RAY_DASHBOARD_PORT": str(free_port()),
            "RAY_TMPDIR": str(self.ray_tmp),
            "RAY_OVERRIDE_RESOURCES": f'{{"CPU": {self.cpus}, "GPU": 0}}',
            "RAY_DEDUP_LOGS": "0",
            **self.extra_env,
        })
        cmd = [sys.executable, "-m", "appliance.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workspace", str(self.workspace)]
        with self.log_path.open("a") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(cmd)}\n")
            log.flush()
            # cwd: a folder without a .env file, so only the settings given here apply.
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.leader = self.proc.pid
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.kill()
                raise _ExitedEarly(f"the appliance exited with code {code}; log:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/system/health", timeout=5).status_code == 200:
                    return httpx.Client(base_url=self.url, timeout=60)
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the appliance was not healthy within {timeout:.0f}s; log:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""

    # ------------------------------------------------------------ the processes of this appliance

    def members(self) -> list[int]:
        """Live processes of the last started appliance and its Ray: its session, or its Ray temp folder."""
        if self.leader is None:
            return []
        leader, marker, me = self.leader, str(self.ray_tmp), os.getpid()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            stat = _stat(pid)
            if stat is None or stat[0] == "Z":  # gone, or a zombie waiting to be reaped
                continue
            if leader in (stat[1], stat[2]) or marker in _cmdline(pid):
                found.append(pid)
        return found

    def find(self, title: str) -> list[int]:
        """Members whose command line (a Ray worker's process title) starts with `title`."""
        return [pid for pid in self.members() if _cmdline(pid).startswith(title)]

    def kill(self, timeout: float = 60) -> None:
        """SIGKILL the appliance and every process of its Ray; return once none is left."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        # Freeze every process first, then kill: SIGKILL reaches them one by one, and a survivor that
        # saw Ray's raylet die would record what a power cut leaves no time for ("node ... is dead").
        self._signal_all(signal.SIGSTOP)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            left = self.members()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            if not left and self.proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of the appliance survived SIGKILL: {[(p, _cmdline(p)) for p in left]}")
            time.sleep(0.2)
        self.proc = None

    def _signal_all(self, sig: int) -> None:
        """Send `sig` to every member, again until a pass finds none new (one may start meanwhile)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        seen: set[int] = set()
        while new := set(self.members()) - seen:
            for pid in new:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            seen |= new

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def appliance_in(tmp_path: Path, cpus: int, env: dict[str, str] | None = None) -> Iterator[ApplianceProcess]:
    """For a fixture (`yield from appliance_in(tmp_path, cpus=2)`): an appliance on `tmp_path` with an
    empty import root `tmp_path/imports`, closed afterwards (every process killed), even when the test
    failed half-way."""
    imports = tmp_path / "imports"
    imports.mkdir()
    proc = ApplianceProcess(tmp_path, imports, cpus=cpus, env=env)
    try:
        yield proc
    finally:
        proc.close()
