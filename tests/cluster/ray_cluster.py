"""A real multi-node Ray cluster on this machine, made with `ray start` as a user would, for tests
that join an existing cluster (`AISTUDIO_RAY_ADDRESS`).

Each node is one `ray start --block` process in a session of its own, started from a working
folder of its own and with no `AISTUDIO_*` variable in its environment, so nothing of the
appliance's settings can reach Ray's processes by inheritance. Every process of the cluster carries
its `--temp-dir` in its command line; `stop()` signals those processes (and the nodes' sessions)
one pid at a time — never `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ports import free_port
from tests.recovery.appliance_process import _cmdline, _stat

RAY = str(Path(sys.executable).with_name("ray"))
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
CLIENT_ENV = {"RAY_AUTH_MODE": "token"}  # what a process joining the cluster needs beside its address


class RayCluster:
    """`head()` then any number of `worker()` nodes; `stop()` ends every process of the cluster."""

    def __init__(self, root: Path):
        self.root = root
        # Short: Ray's socket paths live below it and a Unix socket path has ~107 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="aisc-", dir="/tmp"))
        self.nodes: list[subprocess.Popen] = []
        self.killed: list[subprocess.Popen] = []  # nodes a test killed (`kill_node`)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = root / "ray-cluster.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AISTUDIO_", "RAY_"))}
        # Ray's token auth, as on any cluster: every node and client reads ~/.ray/auth_token.
        env.update(RAY_DEDUP_LOGS="0", RAY_AUTH_MODE="token")
        return env

    def ensure_token(self) -> None:
        """The token file every node and client reads (a first local `ray.init` writes it too)."""
        if not TOKEN_FILE.is_file():
            subprocess.run([RAY, "get-auth-token", "--generate"], env=self._env(), check=True,
                           capture_output=True, timeout=120)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        cwd = self.root / f"node-{name}"  # the raylet's working folder: nothing of the appliance's in it
        cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            node = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], cwd=cwd,
                                    env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.nodes.append(node)
        return node

    @staticmethod
    def _agent_port() -> list[str]:
        """Each node's dashboard agent on a free port: Ray's default (52365) is the same in every
        cluster on the machine, and a node whose agent lost that race has no HTTP, so `ray job
        submit` answers "No available agent to submit job"."""
        return [f"--dashboard-agent-listen-port={free_port()}"]

    def head(self, cpus: int = 1, gpus: int = 0, timeout: float = 300) -> str:
        self.ensure_token()
        self._start("head", ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                             f"--temp-dir={self.temp_dir}", *self._agent_port()])
        self.wait_nodes(1, timeout)
        return self.address

    def worker(self, cpus: int = 2, gpus: int = 0, timeout: float = 300, attempts: int = 3) -> None:
        """Start a worker node and wait until it is up. On a loaded host a raylet can miss its 30 s
        start-up deadline and the node exits: it is started again (`attempts` in all)."""
        for attempt in range(1, attempts + 1):
            node = self._start(f"worker{len(self.nodes)}", [f"--address={self.address}", "--node-ip-address=127.0.0.1",
                                                            f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                                                            *self._agent_port()])
            try:
                self.wait_nodes(sum(n.poll() is None for n in self.nodes), timeout)  # a killed node is not counted
                return
            except AssertionError:
                if node.poll() is None or attempt == attempts:
                    raise
                self.nodes.remove(node)  # it exited before it joined: start another

    def kill_node(self, index: int, timeout: float = 60) -> None:
        """SIGKILL one node — its `ray start` process and every process of its session (raylet,
        workers) — as a machine that is lost would; return once none is left."""
        node = self.nodes[index]
        self.killed.append(node)
        deadline = time.monotonic() + timeout
        while True:
            left = [pid for pid in (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
                    if (stat := _stat(pid)) is not None and stat[0] != "Z" and stat[2] == node.pid]
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of node {index} survived SIGKILL: {left}")
            time.sleep(0.2)
        node.wait(timeout=10)

    def node_folder(self, name: str = "head") -> Path:
        return self.root / f"node-{name}"

    def wait_nodes(self, count: int, timeout: float) -> None:
        """Until `ray status` on the cluster counts `count` alive nodes."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.poll() is not None and node not in self.killed:
                    raise AssertionError(f"a Ray node exited with {node.returncode}:\n{self.log_tail()}")
            try:
                status = subprocess.run([RAY, "status", f"--address={self.address}"], env=self._env(),
                                        capture_output=True, text=True, timeout=90)
                seen = status.stdout + status.stderr
                if status.returncode == 0 and status.stdout.count(" node_") >= count:
                    return
            except subprocess.TimeoutExpired:  # a loaded host: ask again
                seen = "`ray status` did not answer within 90 s"
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} Ray nodes were not up within {timeout:.0f}s:\n{seen}\n{self.log_tail()}")
            time.sleep(1)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""

    def members(self) -> list[int]:
        """Live processes of this cluster: the nodes' sessions, or its temp folder in their command lines."""
        sessions = {node.pid for node in self.nodes}
        marker, me, found = str(self.temp_dir), os.getpid(), []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            stat = _stat(pid)
            if stat is None or stat[0] == "Z":
                continue
            if stat[2] in sessions or marker in _cmdline(pid):
                found.append(pid)
        return found

    def stop(self, timeout: float = 60, grace: float = 5) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after `grace` seconds; return once
        none is. (Some of Ray's processes outlive SIGTERM for ~30 s; nothing here needs their goodbye.)"""
        deadline, kill_at = time.monotonic() + timeout, time.monotonic() + grace
        sig = signal.SIGTERM
        while True:
            left = self.members()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            for node in self.nodes:
                try:
                    node.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            if time.monotonic() > kill_at:
                sig = signal.SIGKILL
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of the Ray cluster survived: {[(p, _cmdline(p)) for p in left]}")
            time.sleep(0.3)
        for node in self.nodes:
            node.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
