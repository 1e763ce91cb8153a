"""Issue #12 item 4: ZIP expansion and disk.

- The ratio is judged per member (from 1 MiB) and in total, and the members that compress at
  all are also judged together, so one incompressible member cannot dilute a pile of small
  bombs (on v0.1, 1.26 MB expanding to 196 MB passed).
- Free disk space is checked before an upload is accepted (its Content-Length plus the margin
  `AISTUDIO_DISK_FREE_MARGIN_BYTES`) and before an archive is extracted (its uncompressed size
  plus the margin): 507 INSUFFICIENT_STORAGE, nothing written.
- At most `AISTUDIO_MAX_ACTIVE_IMPORTS` imports queued or running; one more is 429 TOO_MANY_REQUESTS.

In-process app (the ingress is not the point); the disk check's pure logic is tested with
`shutil.disk_usage` replaced.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.config import Settings
from appliance.importers import check_free_space, check_zip, extract_zip
from appliance.main import create_app
from appliance.services import datasets as service
from appliance.store.errors import InsufficientStorage, InvalidDataset
from tests.fixtures import create_project, make_classification_folder, start_path_import, start_zip_import, wait_import, zip_dir
from tests.hostile.import_worker_hooks import hook, release

KIB, MIB = 1 << 10, 1 << 20
Usage = namedtuple("Usage", "total used free")


def archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def diluted_bombs(path: Path, bombs: int = 12) -> Path:
    """One incompressible 1.2 MB member and `bombs` members of 900 KB of zeros (~1000x each,
    but each under the 1 MiB from which a member is judged alone): ~3.5x over the whole archive."""
    members = {"ds/noise.jpg": os.urandom(1200 * KIB)}
    members.update({f"ds/labels/{i:03d}.txt": bytes(900 * KIB) for i in range(bombs)})
    return archive(path, members)


def staging(settings: Settings) -> list[str]:
    folder = settings.workspace / "staging"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] == code, body
    return body["error"]["message"]


@pytest.fixture
def make_client(tmp_path):
    opened = []

    def make(**overrides) -> tuple[TestClient, Settings]:
        (tmp_path / "imports").mkdir(exist_ok=True)
        settings = Settings(workspace=tmp_path / "ws", import_roots=[tmp_path / "imports"], api_token=None, **overrides)
        client = TestClient(create_app(settings))
        opened.append(client.__enter__())
        return client, settings

    yield make
    for client in opened:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- ratio: per member and in total


def test_small_bombs_beside_an_incompressible_member_are_refused(tmp_path):
    path = diluted_bombs(tmp_path / "diluted.zip")
    infos = zipfile.ZipFile(path).infolist()
    whole = sum(i.file_size for i in infos) / sum(i.compress_size for i in infos)
    assert whole < 200  # the whole-archive ratio alone lets it through
    for check in (lambda: check_zip(path, max_total_bytes=1 << 40),
                  lambda: extract_zip(path, tmp_path / "dest", max_total_bytes=1 << 40)):
        with pytest.raises(InvalidDataset) as caught:
            check()
        assert caught.value.message.startswith("diluted.zip: its compressed members expand ")
        assert "refusing a likely ZIP bomb" in caught.value.message
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_one_bomb_member_beside_an_incompressible_member_is_refused_by_itself(tmp_path):
    path = archive(tmp_path / "one.zip", {"ds/noise.jpg": os.urandom(1200 * KIB), "ds/bomb.bin": bytes(4 * MIB)})
    with pytest.raises(InvalidDataset) as caught:
        check_zip(path, max_total_bytes=1 << 40)
    assert caught.value.message.startswith("one.zip: entry ds/bomb.bin expands ")


def test_images_and_labels_that_compress_normally_pass(tmp_path):
    gen = make_classification_folder(tmp_path / "ds", per_class=5)
    (gen.root / "notes.txt").write_text("label notes\n" * 20000)  # 240 KB that compress ~500x: small, so fine
    path = zip_dir(gen.root, tmp_path / "ok.zip")
    assert "notes.txt" in [Path(i.filename).name for i in check_zip(path, max_total_bytes=1 << 40)]


def test_diluted_bombs_upload_is_400_and_leaves_nothing(make_client, tmp_path):
    client, settings = make_client()
    pid = create_project(client)
    message = error_of(start_zip_import(client, pid, diluted_bombs(tmp_path / "d.zip"), filename="mine.zip"),
                       400, "INVALID_DATASET")
    assert message.startswith("mine.zip: its compressed members expand ") and str(tmp_path) not in message
    assert staging(settings) == []


# --------------------------------------------------------------------------- free disk space


def test_free_space_check_is_pure_arithmetic(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: Usage(10_000, 9_000, 1_000))
    check_free_space(tmp_path, 600, 400, "x.zip: extracting it")  # exactly fits
    with pytest.raises(InsufficientStorage) as caught:
        check_free_space(tmp_path / "not" / "yet", 601, 400, "x.zip: extracting it")
    assert caught.value.status_code == 507 and caught.value.code == "INSUFFICIENT_STORAGE"
    assert caught.value.message == (
        "x.zip: extracting it needs 601 bytes plus a margin of 400 bytes (AISTUDIO_DISK_FREE_MARGIN_BYTES), "
        "but the workspace disk has only 1000 bytes free"
    )


def test_extraction_checks_free_space_before_writing(monkeypatch, tmp_path):
    path = archive(tmp_path / "a.zip", {"ds/a.txt": b"a" * 5000, "ds/b.txt": b"b" * 5000})
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: Usage(1 << 30, 0, 10_000 + 99))
    with pytest.raises(InsufficientStorage, match="needs 10000 bytes plus a margin of 100 bytes"):
        extract_zip(path, tmp_path / "dest", max_total_bytes=1 << 40, free_margin=100)
    assert not (tmp_path / "dest").exists()
    root = extract_zip(path, tmp_path / "dest", max_total_bytes=1 << 40, free_margin=99)
    assert sorted(p.name for p in root.iterdir()) == ["a.txt", "b.txt"]


def test_upload_refused_when_the_disk_is_short(make_client, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    client, settings = make_client(disk_free_margin_bytes=free + (1 << 30))  # never fits
    pid = create_project(client)
    upload = zip_dir(make_classification_folder(tmp_path / "f", per_class=2).root, tmp_path / "f.zip")
    message = error_of(start_zip_import(client, pid, upload), 507, "INSUFFICIENT_STORAGE")
    assert message.startswith("file: the upload needs ") and "AISTUDIO_DISK_FREE_MARGIN_BYTES" in message
    assert staging(settings) == [] and client.get(f"/api/datasets/{pid}").json()["data"]["last_import"] is None


def test_upload_refused_when_its_content_does_not_fit(make_client, tmp_path, monkeypatch):
    """The upload's own size fits but not what it expands to: refused when checked, before extraction."""
    client, settings = make_client(disk_free_margin_bytes=0)
    pid = create_project(client)
    text = os.urandom(3 * MIB // 4).hex().encode()  # 1.5 MiB of hex: packs to about half
    upload = archive(tmp_path / "big.zip", {"ds/red/a.txt": text})
    assert upload.stat().st_size < MIB < len(text)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: Usage(1 << 30, 0, MIB))
    message = error_of(start_zip_import(client, pid, upload), 507, "INSUFFICIENT_STORAGE")
    assert message.startswith(f"big.zip: extracting it needs {len(text)} bytes")
    assert staging(settings) == []


# --------------------------------------------------------------------------- queued imports cap


def test_imports_beyond_the_cap_are_429(make_client, tmp_path, monkeypatch):
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("held"))  # the running import waits for <root>.release
    client, settings = make_client(max_active_imports=2)
    pid = create_project(client)
    root = settings.allowed_import_roots[0]
    first = make_classification_folder(root / "first", per_class=2).root
    second = make_classification_folder(root / "second", per_class=2, seed=5).root
    third = make_classification_folder(tmp_path / "third", per_class=2, seed=6).root
    r1 = start_path_import(client, pid, first)
    assert r1.status_code == 202, r1.text
    r2 = start_path_import(client, pid, second)
    assert r2.status_code == 202 and r2.json()["data"]["status"] == "queued", r2.text
    try:
        message = error_of(start_zip_import(client, pid, zip_dir(third, tmp_path / "third.zip")), 429, "TOO_MANY_REQUESTS")
        assert "2 imports are already queued or running" in message and "AISTUDIO_MAX_ACTIVE_IMPORTS" in message
        assert staging(settings) == []  # the refused upload wrote nothing
        error_of(start_path_import(client, pid, first), 429, "TOO_MANY_REQUESTS")
    finally:
        release(first).touch()
        release(second).touch()
    for r in (r1, r2):
        assert wait_import(client, pid, r.json()["data"]["id"], timeout=120)["status"] == "completed"
    # Room again.
    monkeypatch.undo()
    r3 = start_zip_import(client, pid, tmp_path / "third.zip")
    assert r3.status_code == 202, r3.text
    assert wait_import(client, pid, r3.json()["data"]["id"], timeout=120)["status"] == "completed"
