"""Test side of the training gates (the `training_gates` setting, on in the `server` fixture; see
`ray_jobs/events.py`). A run records each gate it reaches — `start` (its driver, before it takes the
run) and `epoch:<n>` (the Train worker, before epoch n) — with the pid of the process there, and
waits while the gate is closed. The test process started the appliance's Ray, so it reaches the
event-bus actor directly.
"""

from __future__ import annotations

import ray

from tests.workflows import wait_for


class Gates:
    def __init__(self, run_id: str):
        from ray_jobs.events import get_event_bus

        self.run_id, self.bus = run_id, get_event_bus()

    def close(self, *points: str) -> Gates:
        for point in points:
            ray.get(self.bus.close_gate.remote(self.run_id, point))
        return self

    def open(self, point: str | None = None) -> None:
        """Open one gate, or all of this run's."""
        ray.get(self.bus.open_gates.remote(self.run_id, point))

    def arrivals(self, point: str | None = None) -> list[dict]:
        return [a for a in ray.get(self.bus.arrivals.remote(self.run_id)) if point in (None, a["point"])]

    def wait_arrival(self, point: str, nth: int = 1, timeout: float = 300) -> dict:
        """The `nth` arrival of the run at `point` (its driver/worker then waits there while the gate is closed)."""
        return wait_for(lambda: self.arrivals(point), lambda seen: len(seen) >= nth, timeout=timeout, every=0.2)[nth - 1]
