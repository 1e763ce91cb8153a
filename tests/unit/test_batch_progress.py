"""Issue #13, item 11: the in-epoch progress events are throttled — the first batch of an epoch and
its last always, otherwise at most one every `every_s` seconds — so many tiny batches do not flood
the event bus. A controlled clock replaces `time.perf_counter`; no waiting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ray_jobs.core import fit


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(fit.time, "perf_counter", c)
    return c


def trainer(batches, epoch: int = 0, rank0: bool = True):
    return SimpleNamespace(num_training_batches=batches, current_epoch=epoch, max_epochs=3, is_global_zero=rank0)


def run_epoch(callback, t, clock, batches: int, step_s: float) -> None:
    callback.on_train_epoch_start(t, None)
    for i in range(batches):
        clock.now += step_s
        callback.on_train_batch_end(t, None, None, None, i)


def test_many_fast_batches_are_throttled(clock):
    events = []
    callback = fit.BatchProgressCallback(events.append, every_s=0.5)
    run_epoch(callback, trainer(1000), clock, 1000, step_s=0.01)  # 10 s of 10 ms batches
    batches = [e["batch"] for e in events]
    assert batches[0] == 1 and batches[-1] == 1000  # the first and the last batch always
    assert 15 <= len(events) <= 22  # ~2 a second, not 1000
    assert all(e["batches"] == 1000 and e["epoch"] == 1 and e["epochs"] == 3 for e in events)
    assert events[-1]["elapsed_s"] == pytest.approx(10.0)


def test_slow_batches_each_reported_and_epochs_start_afresh(clock):
    events = []
    callback = fit.BatchProgressCallback(events.append, every_s=0.5)
    run_epoch(callback, trainer(3), clock, 3, step_s=2.0)
    run_epoch(callback, trainer(3, epoch=1), clock, 3, step_s=0.01)
    assert [(e["epoch"], e["batch"]) for e in events] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 3)]
    assert events[3]["elapsed_s"] == pytest.approx(0.01)


def test_unknown_total_and_other_ranks(clock):
    events = []
    callback = fit.BatchProgressCallback(events.append)
    run_epoch(callback, trainer(float("inf")), clock, 2, step_s=1.0)
    assert [e["batches"] for e in events] == [None, None]
    run_epoch(callback, trainer(5, rank0=False), clock, 5, step_s=1.0)
    assert len(events) == 2  # only rank 0 publishes
