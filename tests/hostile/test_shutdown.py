"""Issue #12 item 15: SIGTERM stops the appliance promptly and loses nothing.

The appliance runs as its own process (`python -m appliance.cli serve`, its own local Ray,
tests/recovery/appliance_process.py). With a training run in flight (a 1000-epoch run that has
recorded epochs) and several live SSE streams open on it, the CLI process gets SIGTERM — as from
`docker stop` or Kubernetes. It must exit with code 0 within 15 s (a generous bound that fails a
hang, not a performance figure), leave no process of its Ray behind, and on a restart the run is
`interrupted` with every recorded epoch kept, and resumes from there.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading

import httpx
import pytest

from tests.recovery.appliance_process import appliance_in
from tests.workflows import create_experiment, experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray

EXIT_WITHIN_S = 15
STREAMS = 5


@pytest.fixture
def appliance(tmp_path):
    yield from appliance_in(tmp_path, cpus=2)


class Stream(threading.Thread):
    """One live SSE stream, read until the server ends it (or the connection drops)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.opened, self.events, self.error = url, threading.Event(), [], None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=None)) as http, http.stream("GET", self.url) as resp:
                assert resp.status_code == 200, resp.read()
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        self.events.append(line[7:])
                        self.opened.set()
        except Exception as exc:  # the connection dropping at shutdown is fine; a hang is not
            self.error = exc
        finally:
            self.opened.set()


def db_run(ws, eid: str) -> tuple[str, int, list[int]]:
    with sqlite3.connect(f"file:{ws / 'aistudio.db'}?mode=ro", uri=True) as db:
        status, done = db.execute("SELECT status, epochs_done FROM experiments WHERE id = ?", (eid,)).fetchone()
        epochs = [row[0] for row in db.execute(
            "SELECT epoch FROM epochs WHERE experiment_id = ? ORDER BY epoch", (eid,))]
    return status, done, epochs


def test_sigterm_with_open_streams_and_a_running_training_exits_cleanly_and_keeps_the_run(appliance):
    http = appliance.start()
    pid, sid = project_with_split(http, appliance.import_root, per_class=6, ratios=(0.5, 0.25, 0.25))
    eid = create_experiment(http, pid, sid, epochs=1000, name="long")
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    wait_for(lambda: experiment(http, pid, eid), lambda e: e["epochs_done"] >= 1, timeout=300, every=0.5)

    streams = [Stream(f"{appliance.url}/api/training/{pid}/experiments/{eid}/stream") for _ in range(STREAMS)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.opened.wait(60) and s.events[:1] == ["status"], (s.events, s.error)
    http.close()

    appliance.proc.send_signal(signal.SIGTERM)  # the CLI process only, as `docker stop` does
    try:
        code = appliance.proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`aistudio serve` still running {EXIT_WITHIN_S} s after SIGTERM; log:\n{appliance.log_tail()}")
    assert code == 0, appliance.log_tail()
    # Ray's processes go with it (they may take a moment to exit after their parent).
    left = wait_for(appliance.members, lambda pids: pids == [], timeout=EXIT_WITHIN_S, every=0.2)
    assert left == []
    for s in streams:
        s.join(10)
        assert not s.is_alive(), "an SSE client is still connected after the appliance exited"

    status, done, epochs = db_run(appliance.workspace, eid)
    assert status == "interrupted", (status, appliance.log_tail())  # at once, not left for a restart to find
    assert done >= 1 and epochs == list(range(1, done + 1))
    appliance.proc = None

    # ---------------------------------------------------------------- restart on the same workspace
    http = appliance.start()
    exp = experiment(http, pid, eid)
    assert exp["status"] == "interrupted" and exp["epochs_done"] == done
    assert "resume" in exp["error"]
    # Resumable from where it stopped: one more epoch, the earlier ones are not trained again.
    r = http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid, "resume": True, "epochs": done + 1})
    assert r.status_code == 202, r.text
    exp = wait_experiment(http, pid, eid)
    assert exp["status"] == "completed", exp
    assert [h["epoch"] for h in exp["history"]] == list(range(1, done + 2))
    http.close()
