"""The event bus: one named, detached Ray actor that training workers publish to and the ingress
polls to stream SSE. It also holds stop requests and the appliance's storage settings, so a run
started with `ray job submit` finds the workspace and database of the appliance on that cluster.

Events are kept per experiment with a sequence number; history lives in the database too
(epochs), so the bus may be lost with a restart without losing curves.

Gates are a test hook, used only when the appliance runs with `AISTUDIO_TRAINING_GATES=true`:
a run then calls `pass_gate` at named points — `start` (its driver, before it takes the run) and
`epoch:<n>` (the Train worker, before epoch n trains), `batch:<n>` (the Train worker, after the
first batch of epoch n and its `progress` event); evaluations and exports pass `running` (keyed
by their own id; evaluations then also under the id `evaluations`) once their record says running — which records the point and the pid of the
process there, and waits while a test keeps that gate closed. A test can thus act at an exact
point of a run (stop it while queued, on its last epoch, kill its driver) without relying on
epochs being slow.
"""

from __future__ import annotations

import os
import time

import ray

BUS_NAME = "aistudio-events"
BUS_NAMESPACE = "aistudio"
MAX_EVENTS_PER_RUN = 5000
ON_HEAD = {"node:__internal_head__": 0.001}  # Ray's resource of the head node: the appliance's own actors live there


@ray.remote(num_cpus=0)
class EventBus:
    def __init__(self, config: dict):
        self._config = dict(config)
        self._events: dict[str, list[dict]] = {}
        self._stops: set[str] = set()
        self._gates: set[tuple[str, str]] = set()  # closed (run_id, point) pairs
        self._arrivals: dict[str, list[dict]] = {}
        self._seq = 0  # global, so a run's reset never reuses numbers a subscriber has seen

    def configure(self, config: dict) -> None:
        self._config = dict(config)

    def config(self) -> dict:
        return dict(self._config)

    def publish(self, run_id: str, kind: str, data: dict) -> int:
        events = self._events.setdefault(run_id, [])
        if kind == "progress":  # only the latest batch progress matters: it replaces the previous one
            self._events[run_id] = events = [e for e in events if e["type"] != "progress"]
        self._seq += 1
        events.append({"seq": self._seq, "type": kind, "data": data, "ts": time.time()})
        if len(events) > MAX_EVENTS_PER_RUN:  # keep epochs/complete, drop the oldest logs
            drop = next((i for i, e in enumerate(events) if e["type"] == "log"), 0)
            events.pop(drop)
        return self._seq

    def events_after(self, run_id: str, seq: int) -> list[dict]:
        return [e for e in self._events.get(run_id, ()) if e["seq"] > seq]

    def reset(self, run_id: str, keep_stop: bool = False) -> None:
        """Forget a run's events (a new attempt starts clean); `keep_stop` keeps a stop that was
        requested while the run was queued."""
        self._events.pop(run_id, None)
        if not keep_stop:
            self._stops.discard(run_id)

    def clear_stop(self, run_id: str) -> None:
        self._stops.discard(run_id)

    def request_stop(self, run_id: str) -> None:
        self._stops.add(run_id)

    def stop_requested(self, run_id: str) -> bool:
        return run_id in self._stops

    # Gates (test hook, see the module docstring).
    def close_gate(self, run_id: str, point: str) -> None:
        self._gates.add((run_id, point))

    def open_gates(self, run_id: str, point: str | None = None) -> None:
        self._gates = {g for g in self._gates if g[0] != run_id or point not in (None, g[1])}

    def arrive(self, run_id: str, point: str, pid: int) -> None:
        self._arrivals.setdefault(run_id, []).append({"point": point, "pid": pid, "ts": time.time()})

    def gate_closed(self, run_id: str, point: str) -> bool:
        return (run_id, point) in self._gates

    def arrivals(self, run_id: str) -> list[dict]:
        return list(self._arrivals.get(run_id, ()))


def pass_gate(bus, run_id: str, point: str, poll_s: float = 0.1) -> None:
    """Test hook: record that this process reached `point` of the run, then wait while its gate is
    closed. Only called when the `training_gates` setting is on."""
    ray.get(bus.arrive.remote(run_id, point, os.getpid()))
    while ray.get(bus.gate_closed.remote(run_id, point)):
        time.sleep(poll_s)


def pass_gate_if_testing(job_id: str, point: str) -> None:
    """`pass_gate` for jobs without a bus handle of their own (evaluations, exports): only when the
    appliance runs with the `training_gates` setting, else nothing (not even a bus lookup fails)."""
    try:
        bus = get_event_bus()
    except RuntimeError:
        return
    if ray.get(bus.config.remote()).get("training_gates"):
        pass_gate(bus, job_id, point)


def ensure_event_bus(config: dict):
    """Get or create the bus (idempotent across replicas and restarts) and give it the appliance's
    storage settings (`workspace`, `db_url`, GPU fractions, weights dir) for job entrypoints."""
    bus = EventBus.options(
        name=BUS_NAME, namespace=BUS_NAMESPACE, lifetime="detached", get_if_exists=True,
        resources=ON_HEAD,  # not on a worker node, which may be lost (or scaled away) with the bus on it
    ).remote(config)
    ray.get(bus.configure.remote(config))
    return bus


def get_event_bus():
    """The running appliance's bus; a clear error when no appliance runs on this cluster."""
    try:
        return ray.get_actor(BUS_NAME, namespace=BUS_NAMESPACE)
    except ValueError as exc:
        raise RuntimeError(
            "No AI Studio appliance is running on this Ray cluster (event bus actor "
            f"'{BUS_NAME}' not found). Start it with `aistudio serve` first."
        ) from exc


def appliance_settings() -> dict:
    """For job entrypoints: join the cluster if needed and return the running appliance's settings
    (`workspace`, `db_url`, `weights_dir`, GPU fractions)."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), namespace=BUS_NAMESPACE)
    return ray.get(get_event_bus().config.remote())
