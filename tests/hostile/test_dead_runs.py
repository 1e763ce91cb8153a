"""Issue #12, item 7: a dead run must not show `running` (and hold the one training slot) until
its heartbeat goes stale. The run records who drives it in Ray (`ray_driver`: the `ray job submit`
job, or the UI's driver task); the reaper — at start-up and in the watcher, on an external cluster
too — asks Ray whether that driver still lives and interrupts the run as soon as Ray says it ended.

Here a run started with `ray job submit` has its driver process killed with SIGKILL while the run
is held before its first epoch; once Ray reports the job failed, one reaper pass marks the run
`interrupted`, naming the job, and frees the slot — without waiting for the heartbeat time-out.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from appliance.store.db import session_scope
from appliance.store.tables import Experiment
from tests.ray_jobs.jobs import pin_cluster, submit
from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, experiment, project_with_split, wait_experiment, wait_for

pytestmark = pytest.mark.ray


def test_a_run_whose_ray_job_died_is_interrupted_when_ray_says_so(server):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from appliance.services.recovery import ray_driver_alive
    from appliance.store.runs import reap_stale_runs

    pid, sid = project_with_split(server.http, server.import_root, per_class=6)
    eid = create_experiment(server.http, pid, sid, epochs=2, name="orphaned")
    token_file = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.is_file() else None
    jobs = JobSubmissionClient(f"http://127.0.0.1:{server.settings.ray_dashboard_port}", headers=headers)
    gates = Gates(eid).close("epoch:1")
    try:
        entrypoint = f"{pin_cluster()}{sys.executable} -m ray_jobs.train --project {pid} --experiment {eid}"
        job = wait_for(lambda: submit(jobs, entrypoint), lambda submitted: submitted is not None, timeout=120, every=2)
        gates.wait_arrival("epoch:1")  # running: its Train worker waits before epoch 1
        with session_scope(server.settings.db_url) as s:
            driver = s.get(Experiment, eid).ray_driver
        assert driver == f"driver:{jobs.get_job_info(job).job_id}" and ray_driver_alive(driver) is True
        assert reap_stale_runs(server.settings.db_url, driver_alive=ray_driver_alive) == []  # alive: left alone

        os.kill(gates.arrivals("start")[0]["pid"], signal.SIGKILL)  # the job's entrypoint process
        assert wait_for(lambda: jobs.get_job_status(job), lambda s: s.is_terminal(), timeout=120, every=0.5) == JobStatus.FAILED
        # the appliance's own watcher may reap it first (same check): never anything but these two
        assert experiment(server.http, pid, eid)["status"] in ("running", "interrupted")
        assert ray_driver_alive(driver) is False

        reap_stale_runs(server.settings.db_url, driver_alive=ray_driver_alive)  # (the watcher may have done it first)
        exp = experiment(server.http, pid, eid)
        assert exp["status"] == "interrupted" and f"Ray reports the run's driver ({driver}) has ended" in exp["error"], exp
    finally:
        gates.open()

    # The slot is free at once: the run resumes (the job's Train worker is gone with it).
    r = server.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid, "resume": True})
    assert r.status_code == 202, r.text
    done = wait_experiment(server.http, pid, eid)
    assert done["status"] == "completed" and [h["epoch"] for h in done["history"]] == [1, 2], done
