"""Issue #12, item 5: two starts of one experiment must not both succeed.

- A start claims the run with one conditional UPDATE and gets a claim id; the driver launched for
  that claim moves the run queued → running only while the record still holds it, so a driver of
  an older (or forged) claim changes nothing: no history, weights or status of the real run are
  touched (in-process, real SQLite; and through Ray with a real driver task).
- 16 racing `POST /api/training/run` through the real Serve ingress: exactly one 202, fifteen 409
  envelopes; a `ray job submit` of the experiment while it trains is refused with a message
  naming the experiment and its status (exit code 2); the run then completes.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import pytest

from appliance.store.db import session_scope
from appliance.store.errors import Conflict
from appliance.store.tables import EpochRecord, Experiment, Lock
from tests.pg import both_backends
from tests.ray_jobs.jobs import pin_cluster, submit
from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, experiment, project_with_split, wait_experiment, wait_for

RACERS = 16
FORGED_CLAIM = "0123456789abcdef"


def _row(db_url: str, eid: str) -> dict:
    with session_scope(db_url) as s:
        exp = s.get(Experiment, eid)
        epochs = sorted(r.epoch for r in s.query(EpochRecord).filter(EpochRecord.experiment_id == eid))
        locks = [(lock.name, lock.holder) for lock in s.query(Lock)]
        return {"status": exp.status, "claim_id": exp.claim_id, "epochs_done": exp.epochs_done,
                "best_metric": exp.best_metric, "epochs": epochs, "locks": locks, "driver": exp.ray_driver}


# ---------------------------------------------------------------- in-process: the claim and the driver's check

@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_a_driver_moves_only_the_claim_it_was_started_for(client, settings):
    from appliance.store import runs

    pid, sid = project_with_split(client, settings.allowed_import_roots[0], per_class=6)
    eid = create_experiment(client, pid, sid)
    db = settings.db_url

    with session_scope(db) as s:
        first = runs.claim(s, s.get(Experiment, eid))
    runs.mark_running(db, eid, first, "ui", resume=False, ray_driver="task:first")
    runs.record_epoch(db, eid, {"epoch": 1, "val_metric": 0.5}, first)
    runs.finish(db, eid, "interrupted", "cut off", claim_id=first)

    with session_scope(db) as s:  # a second start: resume
        second = runs.claim(s, s.get(Experiment, eid))
    assert second != first
    kept = _row(db, eid)
    assert (kept["status"], kept["claim_id"], kept["epochs"], kept["locks"]) == ("queued", second, [1], [("training", eid)])

    # The first start's driver (late, or a duplicate) and a forged one: refused, nothing changes.
    for stale in (first, FORGED_CLAIM):
        with pytest.raises(Conflict, match=f"Experiment {eid} is queued, no longer the queued run"):
            runs.mark_running(db, eid, stale, "ui", resume=False)
        runs.record_epoch(db, eid, {"epoch": 2, "val_metric": 0.9}, stale)
        runs.heartbeat(db, eid, stale)
        assert runs.finish(db, eid, "failed", "stale", claim_id=stale)["status"] == "queued"
        assert _row(db, eid) == kept

    runs.mark_running(db, eid, second, "ui", resume=True)
    with pytest.raises(Conflict, match=f"Experiment {eid} is running, no longer the queued run"):
        runs.mark_running(db, eid, second, "ui", resume=False)  # the same claim cannot start twice
    assert _row(db, eid)["epochs"] == [1]  # resume=False of a refused driver wiped nothing
    runs.finish(db, eid, "completed", claim_id=second)
    assert _row(db, eid)["locks"] == []


# ---------------------------------------------------------------- through Serve and Ray

@pytest.mark.ray
def test_sixteen_racing_starts_one_run_and_a_refused_job_submit(server):
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    from appliance.services.recovery import ray_driver_alive
    from ray_jobs.train import run_training_task

    pid, sid = project_with_split(server.http, server.import_root, per_class=6)
    eid = create_experiment(server.http, pid, sid, epochs=2, name="raced")
    db = server.settings.db_url
    gates = Gates(eid).close("epoch:1")
    try:
        barrier, answers = threading.Barrier(RACERS), []

        def start() -> None:
            with httpx.Client(base_url=server.url, timeout=120, headers=server.http.headers) as http:
                barrier.wait(timeout=60)
                r = http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid})
                answers.append((r.status_code, r.json()))

        threads = [threading.Thread(target=start) for _ in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        codes = sorted(code for code, _ in answers)
        assert codes == [202] + [409] * (RACERS - 1), answers
        for code, body in answers:
            if code == 409:
                assert body["error"]["code"] == "CONFLICT" and eid in body["error"]["message"], body
                assert body["error"]["message"].startswith(f"Experiment {eid} is already "), body
        claim = _row(db, eid)["claim_id"]

        gates.wait_arrival("epoch:1")  # the one driver took the run: it is running, held before epoch 1
        row = _row(db, eid)
        assert (row["status"], row["claim_id"], row["locks"]) == ("running", claim, [("training", eid)])
        assert row["driver"].startswith("task:") and ray_driver_alive(row["driver"]) is True
        assert len(gates.arrivals("start")) == 1  # one driver only

        # `ray job submit` of the same experiment now: refused, naming it and its status.
        token_file = Path.home() / ".ray" / "auth_token"
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.is_file() else None
        jobs = JobSubmissionClient(f"http://127.0.0.1:{server.settings.ray_dashboard_port}", headers=headers)
        entrypoint = f"{pin_cluster()}{sys.executable} -m ray_jobs.train --project {pid} --experiment {eid}"
        job = wait_for(lambda: submit(jobs, entrypoint), lambda submitted: submitted is not None, timeout=120, every=2)
        ended = wait_for(lambda: jobs.get_job_status(job), lambda s: s.is_terminal(), timeout=300, every=1)
        logs = jobs.get_job_logs(job)
        assert ended == JobStatus.FAILED, logs[-3000:]
        assert f"Refused: Experiment {eid} is already running" in logs, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
        assert "exit code 2" in (jobs.get_job_info(job).message or ""), jobs.get_job_info(job)

        # A driver launched with a claim the record does not hold (forged, or of an older start).
        with pytest.raises(ray.exceptions.RayTaskError, match=f"Experiment {eid} is running, no longer the queued run"):
            ray.get(run_training_task.remote(eid, False, FORGED_CLAIM))
        assert _row(db, eid) == row  # untouched: still running under the real claim
    finally:
        gates.open()

    done = wait_experiment(server.http, pid, eid)
    assert done["status"] == "completed" and [h["epoch"] for h in done["history"]] == [1, 2], done
    # The record says completed just before the driver task returns, and the State API reports it
    # a moment later: wait until Ray says the driver ended.
    wait_for(lambda: ray_driver_alive(row["driver"]), lambda alive: alive is False, timeout=120, every=1)
    weights = server.settings.workspace / "projects" / pid / "experiments" / eid / "weights"
    stamp = (weights / "last.ckpt").stat().st_mtime_ns

    # After the run, a late driver of the finished claim wipes nothing (history, weights, status).
    with pytest.raises(ray.exceptions.RayTaskError, match=f"Experiment {eid} is completed, no longer the queued run"):
        ray.get(run_training_task.remote(eid, False, claim))
    after = experiment(server.http, pid, eid)
    assert (after["status"], after["history"], after["epochs_done"]) == ("completed", done["history"], 2)
    assert (weights / "last.ckpt").stat().st_mtime_ns == stamp


