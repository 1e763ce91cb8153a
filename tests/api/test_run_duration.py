"""Issue #13, item 11: a run's duration keeps counting across a resume (it reset from 27 s to
19 s). Driven through the store's own run life (`claim` → `mark_running` → `finish`/reap/
interrupt), the functions both the UI and `ray job submit` runs go through, and read back through
the API and the experiments fragment. The attempts' lengths are set by moving `started_at` back,
so nothing here waits or depends on timing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from appliance.store import runs
from appliance.store.db import session_scope
from appliance.store.status import JobStatus
from appliance.store.tables import Experiment, Split, utcnow
from ray_jobs.hyperparameters import Hyperparameters
from tests.fixtures import create_project
from tests.htmlq import parse

EXP = "exp-0d0000000001"


@pytest.fixture
def run(client, settings):
    pid = create_project(client, "classification")
    with session_scope(settings.db_url) as db:
        db.add(Split(id="split-0d0000000001", project_id=pid, name="s", train=0.5, val=0.5, test=0.0, seed=0,
                     counts={"total": {"train": 4, "val": 4}}))
        db.flush()
        db.add(Experiment(id=EXP, project_id=pid, split_id="split-0d0000000001", name="e", model="resnet18",
                          params={**Hyperparameters(epochs=4, batch_size=2).model_dump(), "task": "classification",
                                  "image_size": 32}, status=JobStatus.CREATED))
    return pid


def attempt(settings, seconds: float, resume: bool) -> str:
    """Claim and start the run, then make its attempt `seconds` old; return the claim id."""
    with session_scope(settings.db_url) as db:
        claim_id = runs.claim(db, db.get(Experiment, EXP))
    runs.mark_running(settings.db_url, EXP, claim_id, "ui", resume)
    with session_scope(settings.db_url) as db:
        exp = db.get(Experiment, EXP)
        exp.started_at = utcnow() - timedelta(seconds=seconds)
    return claim_id


def shown(client, pid) -> dict:
    r = client.get(f"/api/training/{pid}/experiments/{EXP}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_duration_accumulates_across_resumes(client, settings, run):
    pid = run
    claim = attempt(settings, 27, resume=False)
    running = shown(client, pid)
    assert 27 <= running["duration_s"] < 60 and running["run_seconds"] == 0
    runs.finish(settings.db_url, EXP, JobStatus.STOPPED, claim_id=claim)
    first = shown(client, pid)["duration_s"]
    assert 27 <= first < 60

    claim = attempt(settings, 19, resume=True)  # the resumed attempt has trained 19 s so far
    resumed = shown(client, pid)
    assert resumed["duration_s"] >= first + 19
    assert resumed["run_seconds"] == pytest.approx(first)
    # The page's live counter starts from the ended attempts' seconds, not from zero.
    page = parse(client.get(f"/api/training/{pid}/experiments", headers={"HX-Request": "true"}).text)
    counter = page.select_one(f'tr[data-experiment-id="{EXP}"] .duration')
    assert counter is not None and float(counter.attrs["data-base"]) == pytest.approx(first)

    runs.finish(settings.db_url, EXP, JobStatus.COMPLETED, claim_id=claim)
    done = shown(client, pid)["duration_s"]
    assert done >= first + 19
    cell = parse(client.get(f"/api/training/{pid}/experiments", headers={"HX-Request": "true"}).text).select_one(
        f'tr[data-experiment-id="{EXP}"] .duration-done')
    assert float(cell.attrs["data-seconds"]) == pytest.approx(done)

    # A fresh start (not a resume) counts from zero again.
    claim = attempt(settings, 5, resume=False)
    assert 5 <= shown(client, pid)["duration_s"] < 27
    runs.finish(settings.db_url, EXP, JobStatus.COMPLETED, claim_id=claim)


@pytest.mark.parametrize("ending", ["reaped", "appliance stopped"])
def test_interrupted_attempts_count_too(client, settings, run, ending):
    pid = run
    attempt(settings, 30, resume=False)
    if ending == "reaped":
        with session_scope(settings.db_url) as db:
            db.get(Experiment, EXP).heartbeat_at = utcnow() - runs.STALE_AFTER - timedelta(seconds=5)
        assert runs.reap_stale_runs(settings.db_url) == [EXP]
    else:
        assert runs.interrupt_runs(settings.db_url, [EXP], "the appliance stopped") == [EXP]
    first = shown(client, pid)
    assert first["status"] == "interrupted" and first["duration_s"] >= 30
    claim = attempt(settings, 10, resume=True)
    assert shown(client, pid)["duration_s"] >= first["duration_s"] + 10
    runs.finish(settings.db_url, EXP, JobStatus.COMPLETED, claim_id=claim)


def test_a_stop_while_queued_adds_no_time(client, settings, run):
    """A resumed run stopped before it started trained nothing more: its duration stays."""
    pid = run
    claim = attempt(settings, 12, resume=False)
    runs.finish(settings.db_url, EXP, JobStatus.STOPPED, claim_id=claim)
    before = shown(client, pid)["duration_s"]
    with session_scope(settings.db_url) as db:
        claim = runs.claim(db, db.get(Experiment, EXP))
        db.get(Experiment, EXP).started_at = utcnow() - timedelta(hours=1)  # a stale start of the last attempt
    runs.finish(settings.db_url, EXP, JobStatus.STOPPED, claim_id=claim)
    assert shown(client, pid)["duration_s"] == pytest.approx(before)
