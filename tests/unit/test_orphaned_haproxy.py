"""An appliance killed with SIGKILL leaves Ray's HAProxy running (its manager actor dies without stopping
it): it keeps the appliance's port, so the restart found the port taken (seen when a test session was
killed). `start_appliance` stops such an orphan first (`reap_orphaned_haproxy`): only Ray's HAProxy
binary, only without its manager, only when its config binds the appliance's port."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from appliance.runtime import reap_orphaned_haproxy
from tests.ports import free_port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _orphan_haproxy(binary: str, config) -> int:
    """Start HAProxy from a shell that exits at once (so HAProxy is nobody's child here); its pid."""
    out = subprocess.run(["sh", "-c", f"'{binary}' -db -f '{config}' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _config(tmp_path, name: str, port: int):
    path = tmp_path / f"{name}.cfg"
    path.write_text(
        "global\n    maxconn 16\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        f"    timeout server 5s\nfrontend http_frontend\n    bind 127.0.0.1:{port}\n"
        "    http-request return status 200\n")
    return path


def test_an_orphaned_haproxy_on_the_port_is_stopped_and_no_other(tmp_path):
    from ray.serve._private.haproxy import get_haproxy_binary

    binary = str(get_haproxy_binary())
    ours, other = free_port(), free_port()
    stale = _orphan_haproxy(binary, _config(tmp_path, "stale", ours))
    bystander = _orphan_haproxy(binary, _config(tmp_path, "other", other))
    try:
        deadline = time.monotonic() + 10
        while not (_listening(ours) and _listening(other)):
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.05)
        assert reap_orphaned_haproxy(ours) == [stale]
        assert not _listening(ours)  # the port is free for the restart
        assert _listening(other) and os.path.exists(f"/proc/{bystander}")  # another port's HAProxy stays
        assert reap_orphaned_haproxy(ours) == []
    finally:
        for pid in (stale, bystander):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux only, as Ray's HAProxy")
def test_nothing_to_stop_is_quick():
    started = time.monotonic()
    assert reap_orphaned_haproxy(free_port()) == []
    assert time.monotonic() - started < 5
