"""Issue #12 item 14: a crash mid-import leaves nothing behind after a restart.

The appliance runs as its own process (CLI `serve`, its own local Ray), an upload import is made
mid-run (its worker process frozen with SIGSTOP, so it cannot finish first), and the appliance
is killed with SIGKILL together with every process of its Ray. What crashes at instants a timed
kill cannot hit leave is added to the workspace before the restart (as tests/recovery does): a
file a cut-off commit had moved into a dataset folder without its row, thumbnails of images
that have no row, a try-one-image scratch folder. After the restart: no staging folder, no
image or thumbnail file without a row in ANY project (v0.1 swept only the projects whose
import was cut off, and never thumbnails), every dataset as it was.

Also here: an import being cancelled (`cancelling`) is listed among the active jobs.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from appliance.services import datasets as service
from tests.fixtures import make_classification_folder, zip_dir
from tests.hostile.import_worker_hooks import hook, release, started
from tests.recovery.appliance_process import ApplianceProcess, _cmdline
from tests.workflows import wait_for

DONE = ("completed", "failed", "cancelled")


def data(response: httpx.Response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()["data"]


def new_project(http, name: str) -> str:
    body = {"name": f"{name}-{uuid.uuid4().hex[:6]}", "task": "classification"}
    return data(http.post("/api/projects", json=body), 201)["id"]


def wait_job(http, path: str, done=lambda j: j["status"] in DONE, timeout: float = 300, every: float = 0.3):
    return wait_for(lambda: data(http.get(path)), done, timeout=timeout, every=every)


def parent_of(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2:].split()[1])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def dataset(http, ws: Path, pid: str) -> dict:
    rows = data(http.get(f"/api/datasets/{pid}/images?limit=500"))["items"]
    base = ws / "projects" / pid / "dataset"
    return {
        "rows": sorted((i["id"], i["filename"], i["original_name"]) for i in rows),
        "files": names(base / "images"),
        "thumbs": names(base / ".thumbs"),
    }


@pytest.mark.ray
def test_restart_after_kill_9_mid_import_leaves_no_orphans(tmp_path):
    imports = tmp_path / "imports"
    imports.mkdir()
    appliance = ApplianceProcess(tmp_path, imports, cpus=2)
    try:
        kept = make_classification_folder(imports / "kept", per_class=4, size=32)
        big = make_classification_folder(tmp_path / "big", classes=("red", "blue", "green", "yellow"),
                                         per_class=250, size=32, seed=9)
        big_zip = zip_dir(big.root, tmp_path / "big.zip")
        ws = appliance.workspace

        # ------------------------------------------------------------ first life
        http = appliance.start()
        p1 = new_project(http, "kept")
        job = data(http.post("/api/datasets/import/local", json={"project_id": p1, "source_path": str(kept.root)}), 202)
        assert wait_job(http, f"/api/datasets/{p1}/imports/{job['id']}")["status"] == "completed"
        for image in data(http.get(f"/api/datasets/{p1}/images?limit=500"))["items"]:
            assert http.get(image["thumbnail_url"]).status_code == 200
        before = dataset(http, ws, p1)
        assert len(before["rows"]) == kept.count and before["files"] == sorted(f for _, f, _ in before["rows"])
        assert len(before["thumbs"]) == kept.count

        p2 = new_project(http, "cut")
        with big_zip.open("rb") as f:
            i1 = data(http.post("/api/datasets/import/upload", data={"project_id": p2, "format": "auto"},
                                files={"file": ("big.zip", f, "application/zip")}), 202)["id"]
        # Its worker: a process of its own, started by the ingress replica, not the appliance's process.
        found = wait_for(lambda: [p for p in appliance.members() if i1 in _cmdline(p)], bool, timeout=120, every=0.02)
        assert len(found) == 1, found
        worker = found[0]
        assert "ServeReplica" in _cmdline(parent_of(worker)) and worker != appliance.leader
        wait_job(http, f"/api/datasets/{p2}/imports/{i1}", lambda j: j["status"] != "queued", every=0.02)
        os.kill(worker, signal.SIGSTOP)  # frozen mid-import until the kill
        mid = data(http.get(f"/api/datasets/{p2}/imports/{i1}"))
        assert mid["status"] == "running" and mid["done"] < big.count, mid
        appliance.kill()
        http.close()
        assert appliance.members() == []

        # What crashes at instants a timed kill cannot hit leave behind (v0.1 kept all of these but
        # the P2 file: P1 had no import cut off, and thumbnails were never swept).
        p1_dir, p2_dir = ws / "projects" / p1 / "dataset", ws / "projects" / p2 / "dataset"
        (p1_dir / "images" / "image-00000000000000000000cut.jpg").write_bytes(b"moved, never recorded")
        (p1_dir / ".thumbs" / "image-00000000000000000000cut.jpg").write_bytes(b"its thumbnail")
        (p1_dir / ".thumbs" / "image-000000000000000000gone.jpg").write_bytes(b"thumbnail of a deleted image")
        (p2_dir / "images").mkdir(parents=True, exist_ok=True)
        (p2_dir / "images" / "image-0000000000000000000half.jpg").write_bytes(b"moved by the cut-off commit")
        (p2_dir / ".thumbs").mkdir(parents=True, exist_ok=True)
        (p2_dir / ".thumbs" / "image-0000000000000000000half.jpg").write_bytes(b"its thumbnail")
        (ws / "staging" / "try-0123456789abcdef").mkdir(parents=True)
        assert i1 in names(ws / "staging")

        # ------------------------------------------------------------ second life, same workspace
        http = appliance.start()
        assert names(ws / "staging") == []
        assert dataset(http, ws, p1) == before
        after = dataset(http, ws, p2)
        assert after == {"rows": [], "files": [], "thumbs": []}, after
        cut = data(http.get(f"/api/datasets/{p2}/imports/{i1}"))
        assert cut["status"] == "failed" and cut["added"] == 0 and "unchanged" in cut["error"], cut
        assert data(http.get("/api/system/jobs")) == []
        # The dataset still imports.
        job = data(http.post("/api/datasets/import/local", json={"project_id": p2, "source_path": str(kept.root)}), 202)
        assert wait_job(http, f"/api/datasets/{p2}/imports/{job['id']}")["status"] == "completed"
        assert len(dataset(http, ws, p2)["files"]) == kept.count
        http.close()
    finally:
        appliance.close()
    assert appliance.members() == []


def test_an_import_being_cancelled_is_listed_as_a_job(client, settings, monkeypatch):
    """In-process: the worker holds parsing until released, so `cancelling` lasts until then."""
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("held"))
    pid = data(client.post("/api/projects", json={"name": "c", "task": "classification"}), 201)["id"]
    source = make_classification_folder(settings.allowed_import_roots[0] / "f", per_class=2).root
    job_id = data(client.post("/api/datasets/import/local", json={"project_id": pid, "source_path": str(source)}), 202)["id"]
    try:
        wait_for(started(source).exists, bool, timeout=60, every=0.05)
        assert data(client.delete(f"/api/datasets/{pid}/imports/{job_id}"))["status"] == "cancelling"
        jobs = data(client.get("/api/system/jobs"))
        assert [(j["kind"], j["id"], j["status"]) for j in jobs] == [("import", job_id, "cancelling")]
    finally:
        release(source).touch()
    assert wait_job(client, f"/api/datasets/{pid}/imports/{job_id}", timeout=120)["status"] == "cancelled"
    assert data(client.get("/api/system/jobs")) == []


def test_start_up_sweeps_orphans_of_every_project(settings, tmp_path):
    """In-process, no kill: the files crashes leave in a project that had no import cut off (a
    deletion cut off between its row and its files, a commit's file without its row) and
    thumbnails of no recorded image are removed at start-up; recorded files are kept."""
    from fastapi.testclient import TestClient

    from appliance.main import create_app

    ws = settings.workspace
    with TestClient(create_app(settings)) as client:
        pid = data(client.post("/api/projects", json={"name": "p", "task": "classification"}), 201)["id"]
        source = make_classification_folder(settings.allowed_import_roots[0] / "f", per_class=3).root
        job = data(client.post("/api/datasets/import/local", json={"project_id": pid, "source_path": str(source)}), 202)
        assert wait_job(client, f"/api/datasets/{pid}/imports/{job['id']}", timeout=120)["status"] == "completed"
        for image in data(client.get(f"/api/datasets/{pid}/images"))["items"]:
            assert client.get(image["thumbnail_url"]).status_code == 200
        before = dataset(client, ws, pid)
    base = ws / "projects" / pid / "dataset"
    (base / "images" / "image-00000000000000000000cut.png").write_bytes(b"no row")
    (base / ".thumbs" / "image-00000000000000000000cut.jpg").write_bytes(b"no row")
    (base / ".thumbs" / "image-000000000000000000gone.jpg").write_bytes(b"no row")
    with TestClient(create_app(settings)) as client:
        assert dataset(client, ws, pid) == before
    assert len(before["files"]) == 6 and len(before["thumbs"]) == 6
