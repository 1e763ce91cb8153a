"""Issue #12, items 6 and 7 — the kill -9 test, with real processes (tests/recovery/appliance_process.py).

The appliance trains; right after its 3rd epoch is recorded, it is killed with SIGKILL together with
every process of its Ray, and started again on the same workspace. Then:
- item 7: the run shows `interrupted` (not `running`) within 10 s of the appliance being healthy
  (this Ray is new, so no earlier run can be alive in it);
- item 6: resuming continues from the newest checkpoint on disk — the run's own `last.ckpt` when
  Ray registered its copy of a later epoch too late to survive the kill — and the resumed run's log
  and the epoch history show every epoch exactly once, 1..N.
"""

from __future__ import annotations

import re
import sqlite3

import httpx
import pytest

from tests.recovery.appliance_process import ApplianceProcess
from tests.workflows import TERMINAL, create_experiment, experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray

EPOCHS = 8
KILL_AFTER = 3


@pytest.fixture
def appliance(tmp_path):
    imports = tmp_path / "imports"
    imports.mkdir()
    proc = ApplianceProcess(tmp_path, imports, cpus=2)
    yield proc
    proc.close()  # kills whatever is left even when the test failed half-way


def _ok(response: httpx.Response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()["data"]


def test_kill_9_after_three_epochs_then_resume_trains_every_epoch_once(appliance: ApplianceProcess):
    http = appliance.start()
    pid, sid = project_with_split(http, appliance.import_root, per_class=10)
    eid = create_experiment(http, pid, sid, epochs=EPOCHS, name="killed")
    _ok(http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}), 202)
    at_kill = wait_for(lambda: experiment(http, pid, eid),
                       lambda e: e["epochs_done"] >= KILL_AFTER or e["status"] in TERMINAL, timeout=600, every=0.05)
    appliance.kill()  # SIGKILL to the appliance and every process of its Ray
    http.close()
    assert appliance.members() == []
    assert at_kill["status"] == "running" and KILL_AFTER <= at_kill["epochs_done"] < EPOCHS, at_kill
    with sqlite3.connect(f"file:{appliance.workspace / 'aistudio.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT status FROM experiments WHERE id = ?", (eid,)).fetchone() == ("running",)

    http = appliance.start()
    try:
        # Item 7: decided at start-up, not by a heartbeat time-out (45 s).
        cut = wait_for(lambda: experiment(http, pid, eid), lambda e: e["status"] != "running", timeout=10, every=0.2)
        assert cut["status"] == "interrupted" and "restarted" in cut["error"], cut
        kept = [h["epoch"] for h in cut["history"]]
        assert kept == list(range(1, cut["epochs_done"] + 1)) and cut["epochs_done"] >= KILL_AFTER, cut

        _ok(http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid, "resume": True}), 202)
        done = wait_experiment(http, pid, eid, timeout=900)
        assert done["status"] == "completed", done
        log = http.get(f"/api/training/{pid}/experiments/{eid}/logs").text
    finally:
        http.close()

    # Item 6: every epoch exactly once, in the log and in the history.
    logged = [int(n) for n in re.findall(rf"  epoch (\d+)/{EPOCHS}  ", log)]
    assert logged == list(range(1, EPOCHS + 1)), log
    assert [h["epoch"] for h in done["history"]] == list(range(1, EPOCHS + 1)) and done["epochs_done"] == EPOCHS
    resumed = re.findall(r"resuming after epoch (\d+) from (Ray's checkpoint|the run's last\.ckpt)", log)
    assert len(resumed) == 1, log
    assert int(resumed[0][0]) >= KILL_AFTER - 1, log  # the newest checkpoint: at most the epoch being saved is redone
    assert done["best_metric"] == max(h["val_metric"] for h in done["history"])
