"""Experiments API in-process (real SQLite, no Ray): validation, catalog, restart reconciliation."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from appliance.store.db import session_scope
from appliance.store.tables import Experiment, Lock, utcnow
from appliance.main import create_app
from tests.pg import both_backends
from tests.workflows import create_experiment, project_with_split


@pytest.fixture
def ready(client, settings):
    return project_with_split(client, settings.allowed_import_roots[0], per_class=6)


def test_catalog(client):
    cls = client.get("/api/training/models?task=classification").json()["data"]
    names = {m["name"] for m in cls}
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"} <= names
    det = {m["name"] for m in client.get("/api/training/models?task=detection").json()["data"]}
    assert {"fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2",
            "ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn"} <= det
    resnet18 = next(m for m in cls if m["name"] == "resnet18")
    assert resnet18["parameters"] == 11689512 and resnet18["default_image_size"] == 224
    assert client.get("/api/training/models?task=segmentation").status_code == 422


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_create_and_list(client, ready):
    pid, sid = ready
    eid = create_experiment(client, pid, sid)
    listed = client.get(f"/api/training/{pid}/experiments").json()["data"]
    assert [e["id"] for e in listed] == [eid] and listed[0]["status"] == "created"
    detail = client.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
    assert detail["class_names"] == ["blue", "red"] and detail["history"] == [] and detail["params"]["epochs"] == 2


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"model": "nonexistent"}, "model"),
        ({"model": "ssdlite320_mobilenet_v3_large"}, "detection model"),
        ({"batch_size": 500}, "batch_size"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"augmentations": ["mixup"]}, "mixup"),
        ({"pretrained": True}, "resnet18-f37072fd.pth"),
        ({"split_id": "split-000000000000"}, "split-000000000000"),
        ({"split_id": "../../etc"}, "../../etc"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_experiments_are_refused_with_a_message_that_says_what_to_change(client, ready, overrides, fragment):
    pid, sid = ready
    body = {"name": "e", "split_id": sid, "model": "resnet18", "epochs": 2, "batch_size": 2, **overrides}
    r = client.post(f"/api/training/{pid}/experiments", json=body)
    assert r.status_code in (404, 422), r.text
    assert fragment in r.json()["error"]["message"]
    assert client.get(f"/api/training/{pid}/experiments").json()["data"] == []


def test_split_without_val_is_refused(client, ready):
    pid, _ = ready
    sid = client.post(f"/api/splits/{pid}", json={"name": "noval", "train": 0.8, "val": 0, "test": 0.2}).json()["data"]["id"]
    r = client.post(f"/api/training/{pid}/experiments", json={"name": "e", "split_id": sid, "model": "resnet18", "batch_size": 2})
    assert r.status_code == 422 and "val" in r.json()["error"]["message"]


def test_run_requests_are_checked(client, ready, monkeypatch):
    monkeypatch.setattr("appliance.api.training.ray_is_up", lambda: False)  # Ray may be up in this process
    pid, sid = ready
    eid = create_experiment(client, pid, sid)
    r = client.post("/api/training/run", json={"project_id": pid, "experiment_id": eid})
    assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE"  # no Ray in-process
    r = client.post("/api/training/run", json={"project_id": pid, "experiment_id": "exp-000000000000"})
    assert r.status_code in (404, 503)
    r = client.post(f"/api/training/{pid}/experiments/{eid}/stop")
    assert r.status_code == 409 and "not training" in r.json()["error"]["message"]
    r = client.get(f"/api/training/{pid}/experiments/{eid}/stream")
    assert r.status_code == 503 and r.json()["status"] == "error"
    assert client.get(f"/api/training/{pid}/experiments/exp-000000000000/stream").status_code == 404


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_running_experiment_of_a_dead_server_becomes_interrupted_on_start(settings, ready, client):
    pid, sid = ready
    eid = create_experiment(client, pid, sid)
    with session_scope(settings.db_url) as s:
        exp = s.get(Experiment, eid)
        exp.status, exp.heartbeat_at = "running", utcnow() - timedelta(minutes=5)
        s.add(Lock(name="training", holder=eid))
    with TestClient(create_app(settings)) as fresh:
        exp = fresh.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
        assert exp["status"] == "interrupted" and "resume" in exp["error"]
    with session_scope(settings.db_url) as s:
        assert s.get(Lock, "training") is None


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_a_live_run_is_left_alone_on_start(settings, ready, client):
    pid, sid = ready
    eid = create_experiment(client, pid, sid)
    with session_scope(settings.db_url) as s:
        exp = s.get(Experiment, eid)
        exp.status, exp.heartbeat_at = "running", utcnow()
    with TestClient(create_app(settings)) as fresh:
        assert fresh.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]["status"] == "running"


@both_backends  # also on PostgreSQL (issue #15 item 3)
@pytest.mark.parametrize("interleaving", ["forced", "free"])
def test_slot_is_atomic(settings, ready, client, interleaving):
    """Threads, each with its own session on the real SQLite file, claim the slot at once: exactly
    one wins. `forced` holds every claimant after it has seen the slot free and before it inserts,
    so all of them reach the insert and the database's primary key alone decides."""
    from sqlalchemy import event, select

    from appliance.store.db import session_factory
    from appliance.store.errors import Conflict
    from appliance.store.runs import ALREADY_TRAINING, acquire_slot, release_slot

    pid, sid = ready
    claimants = 6
    eids = [create_experiment(client, pid, sid, name=f"claimant-{i}") for i in range(claimants)]
    for _ in range(3):
        start, inserting = threading.Barrier(claimants), threading.Barrier(claimants)
        outcomes, inserts = {}, []

        def claim(eid: str) -> None:
            session = session_factory(settings.db_url)()
            if interleaving == "forced":
                @event.listens_for(session, "before_flush")
                def _hold(*_args) -> None:
                    inserts.append(eid)
                    inserting.wait(timeout=60)
            try:
                start.wait(timeout=60)
                acquire_slot(session, eid)
                outcomes[eid] = "won"
            except Conflict as exc:
                outcomes[eid] = exc.message
            finally:
                session.close()

        threads = [threading.Thread(target=claim, args=(eid,)) for eid in eids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        winners = [eid for eid, outcome in outcomes.items() if outcome == "won"]
        assert len(winners) == 1 and len(outcomes) == claimants, outcomes
        losers = [outcome for eid, outcome in outcomes.items() if eid != winners[0]]
        assert losers == [ALREADY_TRAINING] * (claimants - 1)
        if interleaving == "forced":
            assert sorted(inserts) == sorted(eids)  # every claimant tried the insert
        with session_scope(settings.db_url) as s:
            assert [(lock.name, lock.holder) for lock in s.scalars(select(Lock))] == [("training", winners[0])]
            acquire_slot(s, winners[0])  # re-entrant for the holder
            with pytest.raises(Conflict, match=ALREADY_TRAINING):
                acquire_slot(s, next(e for e in eids if e != winners[0]))
            release_slot(s, winners[0])


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_two_starts_of_one_run_claim_it_once(settings, ready, client):
    """Threads start the same experiment at once (the slot is re-entrant for a run, so only the
    conditional status update can tell them apart): exactly one claims it, and it keeps the slot."""
    from sqlalchemy import select

    from appliance.store.db import session_factory
    from appliance.store.errors import Conflict
    from appliance.store.runs import claim, finish

    pid, sid = ready
    eid = create_experiment(client, pid, sid)
    claimants = 6
    for _ in range(3):
        start, outcomes = threading.Barrier(claimants), []

        def start_run() -> None:
            session = session_factory(settings.db_url)()
            try:
                exp = session.get(Experiment, eid)
                start.wait(timeout=60)
                claim(session, exp)
                outcomes.append("won")
            except Conflict as exc:
                outcomes.append(exc.message)
            finally:
                session.close()

        threads = [threading.Thread(target=start_run) for _ in range(claimants)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert outcomes.count("won") == 1
        assert [o for o in outcomes if o != "won"] == [f"Experiment {eid} is already queued; wait for it to end or stop it first"] * (claimants - 1)
        with session_scope(settings.db_url) as s:
            assert s.get(Experiment, eid).status == "queued"
            assert [(lock.name, lock.holder) for lock in s.scalars(select(Lock))] == [("training", eid)]
        finish(settings.db_url, eid, "stopped")
