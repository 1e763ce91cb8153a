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

from tests.recovery.appliance_process import ApplianceProcess, appliance_in
from tests.workflows import TERMINAL, create_experiment, experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray

EPOCHS = 8
KILL_AFTER = 3


@pytest.fixture
def appliance(tmp_path):
    yield from appliance_in(tmp_path, cpus=2)


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


def test_resume_picks_the_newest_checkpoint_and_rewinds_history_and_log(client, settings, tmp_path):
    """In-process, real SQLite and real checkpoint files: Ray's latest lags the run's own
    `last.ckpt` (Ray registers a reported checkpoint a moment later); the newer one is chosen, and
    the epochs recorded after it leave the history and the log (they are trained again)."""
    import torch

    from appliance.store import runs
    from appliance.store.tables import Experiment
    from ray_jobs.train import newest_checkpoint, rewind_log, write_log

    def checkpoint(path, epochs_done: int, steps: int) -> str:  # the keys Lightning writes, epoch 0-based
        torch.save({"epoch": epochs_done - 1, "global_step": steps, "state_dict": {}}, path)
        return str(path)

    ray_ckpt, last = checkpoint(tmp_path / "ray.ckpt", 1, 3), checkpoint(tmp_path / "last.ckpt", 2, 6)
    (tmp_path / "torn.ckpt").write_bytes(b"PK\x03\x04 cut off by kill -9")
    assert newest_checkpoint([("Ray's checkpoint", ray_ckpt), ("the run's last.ckpt", last)]) == ("the run's last.ckpt", last, 2)
    assert newest_checkpoint([("Ray's checkpoint", last), ("the run's last.ckpt", last)])[0] == "Ray's checkpoint"
    assert newest_checkpoint([("torn", str(tmp_path / "torn.ckpt")), ("ray", ray_ckpt)]) == ("ray", ray_ckpt, 1)
    assert newest_checkpoint([("torn", str(tmp_path / "torn.ckpt"))]) is None

    pid, sid = project_with_split(client, settings.allowed_import_roots[0], per_class=6)
    eid = create_experiment(client, pid, sid, epochs=EPOCHS)
    with runs.session_scope(settings.db_url) as s:
        claim = runs.claim(s, s.get(Experiment, eid))
    runs.mark_running(settings.db_url, eid, claim, "ui", resume=False)
    log = tmp_path / "train.log"
    write_log(str(log), "starting resnet18")
    for epoch, metric in ((1, 0.5), (2, 0.6), (3, 0.9)):
        event = {"epoch": epoch, "epochs": EPOCHS, "train_loss": 1.0, "val_loss": 1.0, "val_metric": metric,
                 "lr": 0.001, "seconds": 1.0, "images_per_s": 10.0}
        runs.record_epoch(settings.db_url, eid, event, claim)
        write_log(str(log), f"epoch {epoch}/{EPOCHS}  train_loss 1  val_loss 1  val_metric {metric}")
    assert runs.rewind(settings.db_url, eid, 2, "f" * 16) == []  # not this run's claim: nothing changes
    assert runs.rewind(settings.db_url, eid, 2, claim) == [3]
    rewind_log(str(log), 2)
    exp = experiment(client, pid, eid)
    assert [h["epoch"] for h in exp["history"]] == [1, 2] and exp["epochs_done"] == 2 and exp["best_metric"] == 0.6
    assert re.findall(rf"  epoch (\d+)/{EPOCHS}  ", log.read_text()) == ["1", "2"]
    assert "starting resnet18" in log.read_text()
    runs.finish(settings.db_url, eid, "interrupted", claim_id=claim)
