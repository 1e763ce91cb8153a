"""Issue #15 item 2: a training run whose Ray process was lost (its worker node died) ends
`interrupted` — resumable — while one whose training code raised ends `failed`. Ray Train V2 reports
both through `trainer.fit()` as a `TrainingFailedError`; `ray_jobs.train.lost_process` tells them
apart from what it carries (the cluster test kills a real node: tests/cluster/test_gpu_scheduling.py)."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, NodeDiedError, RayTaskError, WorkerCrashedError
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError

from ray_jobs.train import lost_process


def task_error(cause: Exception) -> RayTaskError:
    return RayTaskError("train_fn", "Traceback: …", cause)


@pytest.mark.parametrize("exc", [
    # What Ray Train reported when the test cluster's worker node was killed mid-epoch:
    WorkerGroupError("health check failed", {0: WorkerHealthCheckFailedError("RPC error", ActorDiedError())}),
    WorkerGroupError("health check timed out", {0: WorkerHealthCheckTimeoutError("no answer")}),
    WorkerGroupError("worker 0 died", {0: ActorDiedError()}),
    ControllerError(ActorDiedError()),
    NodeDiedError("node gone"),
    WorkerCrashedError(),
])
def test_a_lost_worker_or_controller_is_a_lost_process(exc):
    assert lost_process(exc)


def test_a_lost_process_is_found_behind_the_cause_chain():
    try:
        try:
            raise ActorDiedError()
        except ActorDiedError as inner:
            raise RuntimeError("fit failed") from inner
    except RuntimeError as outer:
        assert lost_process(outer)


@pytest.mark.parametrize("exc", [
    WorkerGroupError("worker 0 raised", {0: task_error(ValueError("bad batch"))}),
    WorkerGroupError("worker 0 raised", {0: ValueError("CUDA out of memory")}),
    ValueError("boom"),
    KeyboardInterrupt(),
])
def test_an_error_of_the_training_code_is_not(exc):
    assert not lost_process(exc)
