"""Issue #15 items 1 and 2: an appliance that joins an existing two-node Ray cluster keeps its
settings, and GPU placement on that cluster, proven without CUDA.

One cluster for the module, made with `ray start` as a user would (tests/cluster/ray_cluster.py):
a head with one CPU and no GPU, and a worker that *declares* one GPU and four CPUs (Ray schedules by
resource counts, so the placement logic runs although the machine has no GPU; training must then
fall back to the CPU). One appliance (`aistudio serve`, a process of its own) joins it with
`AISTUDIO_RAY_ADDRESS`, training at half a GPU (`AISTUDIO_TRAIN_GPU_FRACTION=0.5`) and evaluations at
a quarter, with the training gates on: a run (and every evaluation) waits at points a test closes,
so concurrency is observed while it lasts, without sleeps.

Item 1 (found on v0.1): the raylets run from working folders of their own with no `AISTUDIO_*` in
their environment, and every Ray process the appliance starts there (the Serve replica, the event
bus, the Train worker, the evaluation tasks) must still use the appliance's workspace, database and
import roots. On v0.1 the replica made a SQLite file in the raylet's working folder and refused
imports from the configured root.

What is checked comes from Ray itself (its State API: nodes, placement groups, actors, tasks), read
by a driver in a process of its own (tests/cluster/ray_client.py), and from the appliance's HTTP API
and pages.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.cluster.ray_client import RayClient
from tests.cluster.ray_cluster import CLIENT_ENV, TOKEN_FILE, RayCluster
from tests.ray_jobs.jobs import submit
from tests.recovery.appliance_process import REPO, ApplianceProcess
from tests.workflows import create_experiment, experiment, project_with_split, read_sse, wait_experiment, wait_for

pytestmark = pytest.mark.ray

TRAIN_GPU, EVAL_GPU = 0.5, 0.25
EVALUATIONS = "evaluations"  # the gate every evaluation passes at `running` (ray_jobs.evaluate.EVALUATIONS_GATE)
WAITING_FOR_GPU = "Waiting for a GPU share"


class Rig:
    def __init__(self, cluster: RayCluster, appliance: ApplianceProcess, http: httpx.Client, ray: RayClient):
        self.cluster, self.appliance, self.http, self.ray = cluster, appliance, http, ray

    def gpu_node(self) -> str:
        return next(n["node_id"] for n in self.ray("nodes") if n["state"] == "ALIVE" and n["resources_total"].get("GPU"))

    def wait_arrivals(self, run: str, point: str, count: int, timeout: float = 180) -> list[dict]:
        return wait_for(lambda: [a for a in self.ray("arrivals", run=run) if a["point"] == point],
                        lambda seen: len(seen) >= count, timeout=timeout, every=0.3)

    def evaluations_tasks(self, state: str) -> list[dict]:
        return [t for t in self.ray("tasks", name="evaluation_task") if t["state"].endswith(state)]

    def evaluate(self, pid: str, eid: str) -> str:
        r = self.http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": "val"})
        assert r.status_code == 202, r.text
        return r.json()["data"]["id"]

    def evaluation(self, pid: str, ev: str) -> dict:
        return self.http.get(f"/api/evaluation/{pid}/{ev}").json()["data"]

    def wait_evaluations(self, pid: str, ids: list[str]) -> None:
        for ev in ids:
            done = wait_for(lambda ev=ev: self.evaluation(pid, ev), lambda e: e["status"] in ("completed", "failed"),
                            timeout=180)
            assert done["status"] == "completed", done


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-cluster")
    cluster = RayCluster(root / "cluster")
    cluster.root.mkdir()
    appliance = client = None
    try:
        cluster.head(cpus=1, gpus=0)
        client = RayClient(cluster.address, CLIENT_ENV, root / "ray-client.log")  # connects meanwhile
        cluster.worker(cpus=4, gpus=1)
        (root / "imports").mkdir()
        appliance = ApplianceProcess(root / "app", root / "imports", cpus=1, env={
            "AISTUDIO_RAY_ADDRESS": cluster.address, **CLIENT_ENV, "AISTUDIO_TRAINING_GATES": "true",
            "AISTUDIO_TRAIN_GPU_FRACTION": str(TRAIN_GPU), "AISTUDIO_EVAL_GPU_FRACTION": str(EVAL_GPU),
            "AISTUDIO_SSE_KEEPALIVE_S": "1"})
        appliance.root.mkdir()
        http = appliance.start()
        yield Rig(cluster, appliance, http, client)
    finally:
        if client is not None:
            client.close()
        if appliance is not None:
            appliance.close()
        cluster.stop()


@pytest.fixture(scope="module")
def dataset(rig):
    return project_with_split(rig.http, rig.appliance.import_root, per_class=6, size=24)


@pytest.fixture(scope="module")
def placed(rig, dataset):
    """One training run held at its first epoch while Ray is asked where it runs and what it holds;
    its SSE stream is read from before the gate opens until the run completes."""
    pid, sid = dataset
    eid = create_experiment(rig.http, pid, sid, epochs=1, name="placed")
    rig.ray("close_gate", run=eid, point="epoch:1")
    r = rig.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid})
    assert r.status_code == 202, r.text
    rig.wait_arrivals(eid, "epoch:1", 1)
    seen = {"gpu_node": rig.gpu_node(), "groups": rig.ray("placement_groups"),
            "workers": [a for a in rig.ray("actors", class_name="RayTrainWorker") if a["state"] == "ALIVE"]}
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(
        read_sse(rig.http, f"/api/training/{pid}/experiments/{eid}/stream", timeout=180)), daemon=True)
    reader.start()
    rig.ray("open_gates", run=eid)
    reader.join(timeout=200)
    return {"pid": pid, "eid": eid, "events": events, **seen}


def test_training_lands_on_the_gpu_node_and_asks_for_its_fraction(rig, placed):
    # Ray's own account: the Train worker is an actor on the GPU node, in a placement group whose
    # one bundle is exactly AISTUDIO_TRAIN_GPU_FRACTION of a GPU, placed on that node.
    [worker] = placed["workers"]
    assert worker["node_id"] == placed["gpu_node"]
    [group] = [g for g in placed["groups"] if g["placement_group_id"] == worker["placement_group_id"]]
    assert group["bundles"] == [{"node_id": placed["gpu_node"], "unit_resources": {"GPU": TRAIN_GPU}}]
    # Ray set CUDA_VISIBLE_DEVICES, but CUDA is not there: the worker trained on the CPU and said so.
    exp = wait_experiment(rig.http, placed["pid"], placed["eid"])
    assert exp["status"] == "completed" and exp["epochs_done"] == 1, exp
    log = rig.http.get(f"/api/training/{placed['pid']}/experiments/{placed['eid']}/logs").text
    assert f"on {TRAIN_GPU:g} of a GPU" in log and "CUDA is not available on its node: training on the CPU" in log


def test_epochs_stream_over_sse_from_the_worker_node(placed):
    kinds = [e[0] for e in placed["events"]]
    assert kinds and kinds[-1] == "complete", placed["events"]
    assert [e[1]["epoch"] for e in placed["events"] if e[0] == "epoch_end"] == [1]
    assert placed["events"][-1][1]["status"] == "completed"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_the_joined_appliance_keeps_its_workspace_database_and_import_roots(rig, dataset, placed):
    pid, _ = dataset
    # The replica's database is the workspace's, not a file in a raylet's working folder; the import
    # from the configured root (the `dataset` fixture's) was allowed and is in it.
    with sqlite3.connect(rig.appliance.workspace / "aistudio.db") as db:
        assert db.execute("select count(*) from images where project_id = ?", (pid,)).fetchone()[0] == 12
    # The Train worker on the other node wrote its checkpoints into the same workspace.
    weights = rig.appliance.workspace / "projects" / pid / "experiments" / placed["eid"] / "weights"
    assert (weights / "best.ckpt").is_file(), files_under(rig.appliance.workspace)
    # Nothing of the appliance's landed where Ray's node processes run.
    for node in ("head", "worker1"):
        assert [f for f in files_under(rig.cluster.node_folder(node)) if "aistudio" in f or f.endswith(".db")] == []


def test_four_evaluations_share_the_gpu_at_a_quarter_each(rig, placed):
    pid, eid = placed["pid"], placed["eid"]
    rig.ray("close_gate", run=EVALUATIONS, point="running")
    try:
        ids = [rig.evaluate(pid, eid) for _ in range(4)]
        rig.wait_arrivals(EVALUATIONS, "running", 4)  # all four are past their start at once
        # Task states reach Ray's State API a moment late: wait until it has all four.
        running = wait_for(lambda: rig.evaluations_tasks("RUNNING"), lambda t: len(t) >= 4, timeout=60)
        assert len(running) == 4, running
        assert {t["node_id"] for t in running} == {rig.gpu_node()}
        assert all(t["required_resources"].get("GPU") == EVAL_GPU for t in running), running
        assert all(rig.evaluation(pid, ev)["status"] == "running" for ev in ids)
    finally:
        rig.ray("open_gates", run=EVALUATIONS)
    rig.wait_evaluations(pid, ids)


def test_beside_training_two_evaluations_run_a_third_waits_then_a_lost_worker_interrupts_it_and_a_submitted_resume_completes(rig, dataset, placed):
    pid, sid = dataset
    eid = create_experiment(rig.http, pid, sid, epochs=2, name="shared")
    rig.ray("close_gate", run=eid, point="epoch:1")
    rig.ray("close_gate", run=eid, point="epoch:2")
    rig.ray("close_gate", run=EVALUATIONS, point="running")
    before = len(rig.ray("arrivals", run=EVALUATIONS))
    r = rig.http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid})
    assert r.status_code == 202, r.text
    rig.wait_arrivals(eid, "epoch:1", 1)  # the Train worker holds its half GPU

    ids = [rig.evaluate(pid, placed["eid"]) for _ in range(3)]
    rig.wait_arrivals(EVALUATIONS, "running", before + 2)
    # Ray's account (its State API is a moment late): two run, one waits for a node, asking for a quarter GPU.
    tasks = wait_for(lambda: (rig.evaluations_tasks("RUNNING"), rig.evaluations_tasks("PENDING_NODE_ASSIGNMENT")),
                     lambda t: len(t[0]) >= 2 and len(t[1]) >= 1, timeout=60)
    running, pending = tasks
    assert len(running) == 2 and len(pending) == 1, tasks
    assert pending[0]["required_resources"].get("GPU") == EVAL_GPU
    assert {t["node_id"] for t in running} == {rig.gpu_node()}
    # The page and the API say why the third waits (Ray's pending state, not a guess).
    waiting = wait_for(lambda: [e for e in (rig.evaluation(pid, ev) for ev in ids) if e["status"] == "queued"],
                       lambda q: len(q) == 1 and q[0]["waiting"] == WAITING_FOR_GPU, timeout=60)
    assert waiting[0]["waiting"] == WAITING_FOR_GPU
    page = rig.http.get(f"/api/evaluation/{pid}", headers={"HX-Request": "true"}).text
    assert page.count(WAITING_FOR_GPU) == 1, page
    rig.ray("open_gates", run=EVALUATIONS)
    rig.ray("open_gates", run=eid, point="epoch:1")  # training goes on meanwhile, up to epoch 2
    rig.wait_evaluations(pid, ids)
    assert all(rig.evaluation(pid, ev)["waiting"] is None for ev in ids)

    # The worker node is lost mid-training (after epoch 1, at the start of epoch 2).
    rig.wait_arrivals(eid, "epoch:2", 1)
    rig.cluster.kill_node(1)
    lost = wait_experiment(rig.http, pid, eid, statuses=("failed", "interrupted", "completed", "stopped"), timeout=180)
    assert lost["status"] == "interrupted" and lost["epochs_done"] == 1, (lost["status"], lost["error"])

    # A new GPU worker joins; a resume submitted with `ray job submit` shows up live and completes.
    rig.cluster.worker(cpus=4, gpus=1)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(f"http://127.0.0.1:{rig.cluster.dashboard_port}",
                                 headers={"Authorization": f"Bearer {TOKEN_FILE.read_text().strip()}"})
    entrypoint = f"{sys.executable} -m ray_jobs.train --project {pid} --experiment {eid} --resume"
    job = wait_for(lambda: submit(client, entrypoint, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}),
                   lambda submitted: submitted is not None, timeout=120, every=2)
    rig.wait_arrivals(eid, "epoch:2", 2)  # the resumed run holds at epoch 2, on the new node
    live = experiment(rig.http, pid, eid)
    assert live["status"] == "running", live
    assert [a["node_id"] for a in rig.ray("actors", class_name="RayTrainWorker") if a["state"] == "ALIVE"] == [rig.gpu_node()]
    rig.ray("open_gates", run=eid)
    status = wait_for(lambda: client.get_job_status(job), lambda s: s in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED},
                      timeout=180, every=1)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    done = experiment(rig.http, pid, eid)
    assert done["status"] == "completed" and done["epochs_done"] == 2, done
