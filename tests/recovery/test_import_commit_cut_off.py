"""An import killed inside its commit, at the two instants a timed kill cannot hit reliably:
after every file has been moved into the dataset folder but before the rows are inserted, and
after the rows are committed but before the job is closed. The import runs for real in a child
process that SIGKILLs itself at that instant; the app then starts on the same workspace.

No Ray: imports run in the app's own process, and the app is the real one (in-process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient

from appliance.main import create_app
from tests.fixtures import make_classification_folder, zip_dir
from tests.recovery.appliance_process import REPO
from tests.workflows import import_folder, wait_for

# Runs one import in a process of its own, as the server would, and dies where told.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from appliance.config import Settings
    from appliance.store.db import session_factory
    from appliance.services import datasets

    workspace, import_root, project_id, source, mode = sys.argv[1:]
    settings = Settings(workspace=workspace, import_roots=[import_root])

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    with session_factory(settings.db_url)() as session:
        if mode == "queued-upload":  # as the upload route does: the ZIP into staging, then queue it
            workspace = datasets.Workspace(settings.workspace)
            import_id, archive = datasets.new_upload_stage(workspace)
            archive.write_bytes(Path(source).read_bytes())
            job = datasets.queue_staged_upload(session, settings, workspace, project_id, "auto", import_id,
                                               Path(source).name)
            print(job.id, flush=True)
            sys.exit(0)  # the server died with the upload queued
        job = datasets.start_local_import(session, settings, project_id, source, "auto")
    print(job.id, flush=True)
    if mode == "files-moved":
        datasets.insert = die  # the commit's row insert: every staged file is in the dataset folder by now
    else:
        commit = datasets._stage_and_commit
        def commit_then_die(*args, **kwargs):
            commit(*args, **kwargs)
            die()
        datasets._stage_and_commit = commit_then_die
    datasets.run_import_here(settings, job.id)
""")


def run_child(settings, project_id: str, source: Path, mode: str, tmp_path: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTUDIO_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(settings.workspace), str(settings.allowed_import_roots[0]), project_id,
         str(source), mode],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    return done.returncode, done.stdout.strip()


def project(client, name: str) -> str:
    r = client.post("/api/projects", json={"name": name, "task": "classification"})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def test_import_killed_inside_its_commit(settings, client, tmp_path):
    root = settings.allowed_import_roots[0]
    ws = settings.workspace
    kept = make_classification_folder(root / "kept", classes=("red", "blue"), per_class=3)
    moved = make_classification_folder(root / "moved", classes=("green", "yellow"), per_class=4, seed=1)
    committed = make_classification_folder(root / "committed", classes=("purple",), per_class=5, seed=2)
    queued = make_classification_folder(tmp_path / "queued", classes=("cyan", "orange"), per_class=3, seed=3)
    upload = zip_dir(queued.root, tmp_path / "queued.zip")

    p1, p2 = project(client, "p1"), project(client, "p2")
    import_folder(client, p1, kept.root)
    p1_files = sorted(p.name for p in ws.joinpath("projects", p1, "dataset", "images").iterdir())
    assert len(p1_files) == kept.count

    code, files_moved = run_child(settings, p1, moved.root, "files-moved", tmp_path)
    assert code == -9, files_moved
    code, rows_committed = run_child(settings, p2, committed.root, "rows-committed", tmp_path)
    assert code == -9, rows_committed
    code, queued_upload = run_child(settings, p2, upload, "queued-upload", tmp_path)
    assert code == 0, queued_upload
    scratch = ws / "staging" / "try-0123456789abcdef"  # a try-one-image request cut off by the same crash
    scratch.mkdir(parents=True)
    (scratch / "image.jpg").write_bytes(b"x")

    # The state the deaths left: P1's folder holds the moved files without rows.
    assert len(list(ws.joinpath("projects", p1, "dataset", "images").iterdir())) == kept.count + moved.count
    assert (ws / "staging" / files_moved).is_dir() and (ws / "staging" / queued_upload / "upload.zip").is_file()

    with TestClient(create_app(settings)) as fresh:
        job = fresh.get(f"/api/datasets/{p1}/imports/{files_moved}").json()["data"]
        assert job["status"] == "failed" and "unchanged" in job["error"] and job["added"] == 0
        p1_images = fresh.get(f"/api/datasets/{p1}/images").json()["data"]
        assert p1_images["total"] == kept.count
        assert sorted(p.name for p in ws.joinpath("projects", p1, "dataset", "images").iterdir()) == p1_files
        assert sorted(i["filename"] for i in p1_images["items"]) == p1_files

        job = fresh.get(f"/api/datasets/{p2}/imports/{rows_committed}").json()["data"]
        assert job["status"] == "completed" and job["added"] == committed.count and job["error"] is None

        job = wait_for(lambda: fresh.get(f"/api/datasets/{p2}/imports/{queued_upload}").json()["data"],
                       lambda j: j["status"] not in ("queued", "running"), timeout=60)
        assert job["status"] == "completed" and job["added"] == queued.count, job
        p2_images = fresh.get(f"/api/datasets/{p2}/images").json()["data"]
        assert sorted(i["original_name"] for i in p2_images["items"]) == sorted(
            [item.relpath for item in committed.items + queued.items])  # the ZIP's top folder is dropped
        assert sorted(p.name for p in ws.joinpath("projects", p2, "dataset", "images").iterdir()) == sorted(
            i["filename"] for i in p2_images["items"])
        wait_for(lambda: sorted(p.name for p in (ws / "staging").iterdir()), lambda names: names == [], timeout=30)
