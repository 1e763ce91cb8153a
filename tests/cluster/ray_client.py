"""A Ray driver connected to a test cluster, in a process of its own, that a test drives one JSON
command at a time (stdin/stdout lines): gates on the appliance's event bus, and Ray's State API.

The test process may already hold a local Ray (the session `server` fixture), and one process can
be connected to one cluster only; this process connects to the test cluster instead.
`python -m tests.cluster.ray_client ADDRESS`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _serve(address: str) -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # the answers' own channel:
    os.dup2(2, 1)  # whatever Ray prints (raylet warnings) goes to stderr, never among the answers
    import ray
    from ray.util import state

    ray.init(address=address, namespace="aistudio", logging_level="ERROR", log_to_driver=False)
    from ray_jobs.events import get_event_bus

    gcs = ray.get_runtime_context().gcs_address

    def bus():
        return get_event_bus()

    def close_gate(run: str, point: str):
        return ray.get(bus().close_gate.remote(run, point))

    def open_gates(run: str, point: str | None = None):
        return ray.get(bus().open_gates.remote(run, point))

    def arrivals(run: str):
        return ray.get(bus().arrivals.remote(run))

    def tasks(name: str):
        found = state.list_tasks(address=gcs, filters=[("name", "=", name)], detail=True, limit=1000,
                                 raise_on_missing_output=False)
        return [{"task_id": t.task_id, "state": str(t.state), "node_id": t.node_id,
                 "required_resources": t.required_resources} for t in found]

    def actors(class_name: str):
        found = state.list_actors(address=gcs, filters=[("class_name", "=", class_name)], detail=True,
                                  raise_on_missing_output=False)
        return [{"actor_id": a.actor_id, "state": str(a.state), "node_id": a.node_id, "pid": a.pid,
                 "placement_group_id": a.placement_group_id} for a in found]

    def placement_groups():
        found = state.list_placement_groups(address=gcs, detail=True, raise_on_missing_output=False)
        return [{"placement_group_id": p.placement_group_id, "state": str(p.state),
                 "bundles": [{"node_id": b.get("node_id"), "unit_resources": b.get("unit_resources")}
                             for b in (p.bundles or [])]} for p in found]

    def nodes():
        return [{"node_id": n.node_id, "state": str(n.state), "resources_total": n.resources_total,
                 "is_head_node": n.is_head_node}
                for n in state.list_nodes(address=gcs, detail=True, raise_on_missing_output=False)]

    ops = {f.__name__: f for f in (close_gate, open_gates, arrivals, tasks, actors, placement_groups, nodes)}
    print(json.dumps({"ok": "ready"}), file=answers)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = {"ok": ops[command["op"]](**command.get("args", {}))}
        except Exception as exc:  # answered, not fatal: the test decides
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer, default=str), file=answers)


class RayClient:
    """`client(op, **args)` → the answer; `close()` ends the process."""

    def __init__(self, address: str, env: dict[str, str], log_path: Path):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AISTUDIO_", "RAY_"))}
        clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        with log_path.open("a") as log:  # Ray's messages to the driver
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.ray_client", address], cwd=REPO,
                                         env={**clean, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, bufsize=1)
        self.address, self.ready = address, False  # it connects meanwhile; the first command waits for it

    def __call__(self, op: str, **args):
        if not self.ready:
            if not self.proc.stdout.readline():
                raise AssertionError(f"the Ray client did not connect to {self.address} (exit {self.proc.wait()})")
            self.ready = True
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the Ray client exited with {self.proc.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"{op}{args}: {answer['error']}")
        return answer["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    _serve(sys.argv[1])
