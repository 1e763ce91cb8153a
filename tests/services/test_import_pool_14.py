"""Issue #14, item 3: imports at disk speed — a process pool that reads, hashes, decodes, stores and
thumbnails each file once, rows in one transaction at the end, images/s and ETA on the job.

In-process (no Ray, no server): `run_import_here` is what the import's worker process runs; one test
goes through `run_import` and that worker process. The pool is forced with small chunks so a few
dozen images span several pool tasks.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from appliance.services import datasets, import_pool
from appliance.store import imports
from appliance.store.db import get_engine, migrate, session_scope
from appliance.store.ids import new_id
from appliance.store.paths import Workspace
from appliance.store.status import JobStatus
from appliance.store.tables import Image as ImageRow
from appliance.store.tables import ImportJob, Project, utcnow


def _jpeg(size, rng, **save) -> bytes:
    coarse = Image.frombytes("RGB", (4, 4), rng.randbytes(48)).resize(size, Image.BILINEAR)
    noise = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    Image.blend(coarse, noise, 0.2).save(buf, format="JPEG", quality=85, **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """40 files in two class folders: small JPEGs (their own thumbnail), large ones (resized), an
    EXIF-rotated one, PNGs (RGBA, palette, 16-bit grey), a CMYK JPEG, a duplicate, and a corrupt file
    in the middle."""
    root = tmp_path_factory.mktemp("pool") / "imports" / "animals"
    rng = random.Random(14)
    files: dict[str, bytes] = {}
    for i in range(30):
        files[f"cat/small_{i:02d}.jpg"] = _jpeg((96, 72), rng)
    for i in range(4):
        files[f"dog/large_{i}.jpg"] = _jpeg((640, 400), rng)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    files["dog/rotated.jpg"] = _jpeg((120, 80), rng, exif=exif.tobytes())
    for name, mode in (("rgba", "RGBA"), ("palette", "P"), ("grey16", "I;16")):
        im = Image.new("RGB", (50, 40), tuple(rng.randrange(256) for _ in range(3))).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            im = im.convert("I").point(lambda v: v * 200).convert("I;16")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        files[f"dog/{name}.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(buf, format="JPEG")
    files["dog/cmyk.jpg"] = buf.getvalue()
    files["cat/zz_duplicate.jpg"] = files["cat/small_03.jpg"]
    files["cat/small_15.jpg"] = files["cat/small_15.jpg"][:300]  # corrupt, in the middle of the class
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _queued(tmp: Path, source: Path, workers: int) -> tuple:
    from appliance.config import Settings

    settings = Settings(workspace=tmp / "ws", import_roots=[source.parent], api_token=None, import_workers=workers)
    Workspace(settings.workspace).ensure()
    migrate(get_engine(settings.db_url))
    project_id, import_id = new_id("project"), new_id("import")
    with session_scope(settings.db_url) as s:
        s.add(Project(id=project_id, name="p", task="classification"))
        s.flush()
        s.add(ImportJob(id=import_id, project_id=project_id, status="queued", format="auto", source=str(source)))
    return settings, project_id, import_id


def _result(settings, project_id: str, import_id: str) -> dict:
    ws = Workspace(settings.workspace)
    with session_scope(settings.db_url) as s:
        job = datasets.import_public(s.get(ImportJob, import_id))
        rows = s.scalars(select(ImageRow).where(ImageRow.project_id == project_id)).all()
        images = {}
        for r in rows:
            thumb = ws.thumbs_dir(project_id) / Workspace.thumb_name(r.filename)
            images[r.original_name] = {
                "sha256": r.sha256, "size": (r.width, r.height), "size_bytes": r.size_bytes, "label": r.label,
                "phash": r.phash, "ext": Path(r.filename).suffix,
                "file": hashlib.sha256((ws.images_dir(project_id) / r.filename).read_bytes()).hexdigest(),
                "thumb": hashlib.sha256(thumb.read_bytes()).hexdigest() if thumb.is_file() else None,
            }
        order = [r.original_name for r in sorted(rows, key=lambda r: (r.created_at, r.id))]
    return {"job": job, "images": images, "order": order, "files": _names(ws.images_dir(project_id)),
            "thumbs": _names(ws.thumbs_dir(project_id)), "staging": _names(ws.staging_dir)}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(import_pool, "CHUNK", 5)  # 40 files: 8 pool tasks


def test_pool_import_equals_the_serial_one(tmp_path, source, small_chunks):
    results = {}
    for workers in (1, 3):
        settings, project_id, import_id = _queued(tmp_path / f"w{workers}", source, workers)
        datasets.run_import_here(settings, import_id)
        results[workers] = _result(settings, project_id, import_id)
    serial, pooled = results[1], results[3]
    assert serial["job"]["status"] == "completed", serial["job"]
    assert pooled["images"] == serial["images"]
    assert pooled["order"] == serial["order"]  # rows in source order, whatever process did the file
    for key in ("added", "duplicates", "skipped", "warnings", "done", "total", "detected"):
        assert pooled["job"][key] == serial["job"][key], key
    job = pooled["job"]
    assert (job["added"], job["duplicates"], job["skipped"]) == (38, 1, 1), job
    # Every row has its file and thumbnail, and nothing else is in the folders; staging is gone.
    assert len(pooled["files"]) == len(pooled["thumbs"]) == 38 and pooled["staging"] == []
    images = pooled["images"]
    assert all(i["phash"] and i["thumb"] for i in images.values())
    assert images["dog/rotated.jpg"]["size"] == (80, 120)  # EXIF orientation applied
    assert images["dog/cmyk.jpg"]["file"] != hashlib.sha256((source / "dog/cmyk.jpg").read_bytes()).hexdigest()
    assert images["cat/small_00.jpg"]["file"] == images["cat/small_00.jpg"]["sha256"]  # stored as read
    assert images["cat/small_00.jpg"]["thumb"] == images["cat/small_00.jpg"]["file"]  # its own thumbnail
    assert images["dog/large_0.jpg"]["thumb"] != images["dog/large_0.jpg"]["file"]
    assert "cat/zz_duplicate.jpg" not in images


def test_a_corrupt_file_in_the_middle_is_named_and_the_rest_imports(tmp_path, source, small_chunks):
    settings, project_id, import_id = _queued(tmp_path, source, 2)
    datasets.run_import_here(settings, import_id)
    job = _result(settings, project_id, import_id)["job"]
    assert job["status"] == "completed" and job["added"] == 38
    [warning] = job["warnings"]
    assert warning["file"] == "cat/small_15.jpg"
    assert warning["reason"].startswith("unreadable image (") and warning["reason"].endswith("; skipped")
    assert str(source) not in json.dumps(job["warnings"])  # named by its path in the dataset only


def test_cancel_mid_import_leaves_nothing(tmp_path, source, small_chunks, monkeypatch):
    """The cancel arrives with the first progress report, while pool tasks are still writing files."""
    settings, project_id, import_id = _queued(tmp_path, source, 2)
    real = imports.set_progress
    seen = []

    def cancel_then_report(url, job_id, done, total):
        seen.append(done)
        with session_scope(url) as s:
            s.get(ImportJob, job_id).status = JobStatus.CANCELLING
        return real(url, job_id, done, total)

    monkeypatch.setattr(imports, "set_progress", cancel_then_report)
    datasets.run_import_here(settings, import_id)
    result = _result(settings, project_id, import_id)
    assert result["job"]["status"] == "cancelled", result["job"]
    assert seen and seen[0] < 40  # cancelled with files still to do
    assert result["images"] == {} and result["files"] == [] and result["thumbs"] == [] and result["staging"] == []


def test_the_worker_process_runs_the_pool_and_reports_its_rate(tmp_path, source, small_chunks):
    """Through `run_import`: the import's own worker process, which forks the pool."""
    settings, project_id, import_id = _queued(tmp_path, source, 2)
    datasets.run_import(settings, import_id)
    result = _result(settings, project_id, import_id)
    job = result["job"]
    assert job["status"] == "completed" and job["added"] == 38 and len(result["files"]) == 38
    assert job["started_at"] is not None and job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["images_per_s"] > 0 and job["eta_s"] is None


def test_rate_and_eta_come_from_the_stored_progress():
    now = utcnow()
    job = ImportJob(id="imp-000000000000", project_id="p", status=JobStatus.RUNNING, format="auto", source="s",
                    done=250, total=1000, started_at=now - timedelta(seconds=10))
    assert datasets.import_rate(job, now) == {"images_per_s": 25.0, "eta_s": 30.0}
    job.started_at = (now - timedelta(seconds=10)).replace(tzinfo=None)  # as SQLite gives it back
    assert datasets.import_rate(job, now) == {"images_per_s": 25.0, "eta_s": 30.0}
    job.done = 0
    assert datasets.import_rate(job, now) == {"images_per_s": None, "eta_s": None}
    job.done, job.status, job.finished_at = 1000, JobStatus.COMPLETED, now + timedelta(seconds=30)
    assert datasets.import_rate(job, now + timedelta(hours=1)) == {"images_per_s": 25.0, "eta_s": None}
    job.started_at, job.status = None, JobStatus.QUEUED
    assert datasets.import_rate(job, now) == {"images_per_s": None, "eta_s": None}


def test_the_progress_bar_shows_images_per_second_and_the_time_left(client, settings):
    project_id = client.post("/api/projects", json={"name": "p", "task": "classification"}).json()["data"]["id"]
    import_id = new_id("import")
    with session_scope(settings.db_url) as s:
        s.add(ImportJob(id=import_id, project_id=project_id, status=JobStatus.RUNNING, format="auto",
                        source="upload:big.zip", done=1200, total=20000, started_at=utcnow() - timedelta(seconds=2)))
    try:
        data = client.get(f"/api/datasets/{project_id}/imports/{import_id}").json()["data"]
        assert 400 < data["images_per_s"] <= 600 and 28 < data["eta_s"] < 45, data
        html = client.get(f"/api/datasets/{project_id}/imports/{import_id}", headers={"HX-Request": "true"}).text
        assert 'id="import-rate"' in html and " images/s" in html
        assert 'id="import-eta"' in html and " s left" in html
    finally:
        with session_scope(settings.db_url) as s:
            s.get(ImportJob, import_id).status = JobStatus.FAILED
