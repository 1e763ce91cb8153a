"""Issue #12 item 13: 500s from odd input, and server paths in error messages.

Each odd value gets a clean 4xx envelope or a per-file warning naming the field or the file, never
a 500 or an "Unexpected error" job: a NUL byte in `source_path`, a `Last-Event-ID` that is not an
epoch number (`²`, or more digits than int() takes), a YOLO `data.yaml` `names` key `²`, COCO
`"id": []`, and a COCO `file_name` holding a lone `\\ud800` escape (which made every later read of
the import record a 500). Error messages never echo an absolute server path outside the import
roots: a folder outside them, an OS error while extracting a ZIP (staging paths), Pillow's
message about a stored image (workspace paths).

In-process (`TestClient` with `raise_server_exceptions=False`, so a 500 is seen as the client
sees it) except `Last-Event-ID`, whose stream needs Ray: through the session `server`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.main import create_app
from tests.fixtures import (
    create_project,
    import_and_wait,
    list_all_images,
    make_classification_folder,
    make_detection_coco,
    make_detection_yolo,
    start_path_import,
    start_zip_import,
    wait_import,
)


@pytest.fixture
def app(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def error_of(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and body["error"]["code"] == code, body
    return body["error"]["message"]


def import_record(app, pid: str, import_id: str) -> dict:
    r = app.get(f"/api/datasets/{pid}/imports/{import_id}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


# ----------------------------------------------------------------------------- source_path


@pytest.mark.parametrize("suffix", ["ds\x00", "\x00/../ds", "ds/\x00x"])
def test_nul_byte_in_source_path_is_a_422_naming_the_field(app, settings, suffix):
    root = settings.allowed_import_roots[0]
    make_classification_folder(root / "ds", per_class=1, size=8)
    pid = create_project(app)
    message = error_of(start_path_import(app, pid, f"{root}/{suffix}"), 422, "VALIDATION_ERROR")
    assert message.startswith("source_path:") and "NUL" in message
    assert app.get(f"/api/datasets/{pid}").json()["data"]["last_import"] is None


@pytest.mark.parametrize(("source_path", "says"), [
    ("~no-such-user-aistudio/ds", "a user the server does not know"),
    ("{root}/" + "a" * 300, "File name too long"),  # one name longer than the file system allows
])
def test_unusable_source_path_is_a_422_naming_the_field(app, settings, source_path, says):
    pid = create_project(app)
    path = source_path.format(root=settings.allowed_import_roots[0])
    message = error_of(start_path_import(app, pid, path), 422, "VALIDATION_ERROR")
    assert message.startswith("source_path:") and says in message, message


def test_folder_outside_the_import_roots_is_not_echoed(app, settings, tmp_path):
    outside = make_classification_folder(tmp_path / "private" / "secret-name", per_class=1, size=8).root
    pid = create_project(app)
    for path in (outside, f"{settings.allowed_import_roots[0]}/../private/secret-name"):
        message = error_of(start_path_import(app, pid, path), 403, "FORBIDDEN_PATH")
        assert message.startswith("source_path:") and "import roots" in message
        assert "private" not in message and "secret-name" not in message, message


# ----------------------------------------------------------------------------- annotation files


def test_yolo_names_key_superscript_two_fails_the_import_naming_the_file(app, settings):
    root = make_detection_yolo(settings.allowed_import_roots[0] / "yolo", n=2, size=16).root
    (root / "data.yaml").write_text("names:\n  0: red\n  ²: blue\n", encoding="utf-8")
    pid = create_project(app, "detection")
    job = import_and_wait(app, pid, root)
    assert job["status"] == "failed", job
    assert job["error"].startswith("data.yaml: names entry '²'"), job["error"]


def test_coco_image_id_list_fails_the_import_naming_the_file_and_field(app, settings):
    root = make_detection_coco(settings.allowed_import_roots[0] / "coco", n=2, size=16).root
    ann = root / "annotations" / "instances_default.json"
    doc = json.loads(ann.read_text())
    doc["images"][0]["id"] = []
    ann.write_text(json.dumps(doc))
    pid = create_project(app, "detection")
    job = import_and_wait(app, pid, root)
    assert job["status"] == "failed", job
    assert job["error"].startswith("annotations/instances_default.json: image entry with 'id' []"), job["error"]


@pytest.mark.parametrize("key", ["image_id", "category_id"])
def test_coco_annotation_with_list_ids_is_a_warning(app, settings, key):
    root = make_detection_coco(settings.allowed_import_roots[0] / "coco", n=2, size=16).root
    ann = root / "annotations" / "instances_default.json"
    doc = json.loads(ann.read_text())
    doc["annotations"][0][key] = []
    ann.write_text(json.dumps(doc))
    pid = create_project(app, "detection")
    job = import_and_wait(app, pid, root)
    assert job["status"] == "completed", job
    assert {"file": "annotations/instances_default.json",
            "reason": f"annotation 1: unknown {key.removesuffix('_id')} id []; skipped"} in job["warnings"], job


def test_coco_lone_surrogate_escapes_keep_the_import_record_readable(app, settings):
    """`"\\ud800"` is valid JSON but not UTF-8 text: in a warning it made GET …/imports/{id} a 500,
    and as a label it could not be stored."""
    root = make_detection_coco(settings.allowed_import_roots[0] / "coco", n=3, size=16).root
    ann = root / "annotations" / "instances_default.json"
    doc = json.loads(ann.read_text())
    doc["images"][0]["file_name"] = "\ud800.jpg"  # a missing file: a warning quoting the name
    doc["categories"][1]["name"] = "blue\udcff"  # the label of image 2's box: that image is skipped
    ann.write_text(json.dumps(doc))
    pid = create_project(app, "detection")
    r = start_path_import(app, pid, root)
    assert r.status_code == 202, r.text
    job = wait_import(app, pid, r.json()["data"]["id"])  # reads the record: a 500 fails here
    assert job["status"] == "completed", job
    reasons = {w["reason"] for w in job["warnings"]}
    assert "image 1: missing image file \\ud800.jpg" in reasons, job["warnings"]
    assert {"file": "images/img_001.jpg", "reason": "its name or a label is not valid UTF-8 text; skipped"} \
        in job["warnings"], job["warnings"]
    assert [i["original_name"] for i in list_all_images(app, pid)] == ["images/img_002.jpg"]


# ----------------------------------------------------------------------------- paths in messages


def test_zip_member_name_too_long_fails_without_naming_the_staging_folder(app, settings, tmp_path):
    """ENAMETOOLONG while extracting: the OS error's text is the absolute staging path."""
    archive = tmp_path / "long.zip"
    make_classification_folder(tmp_path / "ds", per_class=1, size=8)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "ds").rglob("*.jpg")):
            zf.write(path, f"ds/{path.parent.name}/{path.name}")
        zf.writestr("ds/red/" + "a" * 300 + ".jpg", b"x")
    pid = create_project(app)
    r = start_zip_import(app, pid, archive)
    assert r.status_code == 202, r.text
    job = wait_import(app, pid, r.json()["data"]["id"])
    assert job["status"] == "failed", job
    assert job["error"].startswith("long.zip: cannot extract ds/red/aaa") and "File name too long" in job["error"]
    assert str(settings.workspace) not in job["error"] and "staging" not in job["error"], job["error"]


def test_unexpected_os_error_in_an_import_gives_its_reason_not_its_path(app, settings, monkeypatch):
    """As in tests/api/test_datasets.py, the commit's insert fails in the import's worker process
    (simulated: a full disk is hard to arrange) with an OSError naming a server file: the job says
    why, not where."""
    from appliance.services import datasets as service
    from tests.hostile.import_worker_hooks import FULL_DISK_FILE, hook

    root = make_classification_folder(settings.allowed_import_roots[0] / "ds", per_class=1, size=8).root
    pid = create_project(app)
    monkeypatch.setattr(service, "WORKER_ENTRY", hook("full_disk"))
    job = import_and_wait(app, pid, root)
    assert job["status"] == "failed" and job["error"] == "Unexpected error: No space left on device", job
    assert FULL_DISK_FILE not in str(job)


def test_unreadable_stored_image_names_the_file_not_the_workspace(app, settings):
    """A stored image damaged on disk: the thumbnail is a 400 naming the file, not its absolute path."""
    root = make_classification_folder(settings.allowed_import_roots[0] / "ds", per_class=1, size=8).root
    pid = create_project(app)
    assert import_and_wait(app, pid, root)["status"] == "completed"
    image = list_all_images(app, pid)[0]
    stored = Path(settings.workspace) / "projects" / pid / "dataset" / "images" / image["filename"]
    stored.write_bytes(b"not an image any more")
    thumb = stored.parents[1] / ".thumbs" / (stored.stem + ".jpg")  # made at import: remove it, so the
    thumb.unlink()  # request decodes the damaged image (the lazy path)
    message = error_of(app.get(f"/api/datasets/{pid}/thumbnail/{image['filename']}"), 400, "INVALID_DATASET")
    assert message.startswith(f"{image['filename']}: unreadable image"), message
    assert str(settings.workspace) not in message, message


# ----------------------------------------------------------------------------- Last-Event-ID (needs Ray)


@pytest.mark.ray
def test_odd_last_event_ids_never_fail_the_stream(server):
    """The stream of a run that never started: `status` then `complete`, whatever the id says. More
    digits than int() accepts (4300) made it a 500."""
    from tests.workflows import create_experiment, project_with_split, read_sse

    pid, sid = project_with_split(server.http, server.import_root, per_class=5, size=16)
    eid = create_experiment(server.http, pid, sid, batch_size=2)
    url = f"/api/training/{pid}/experiments/{eid}/stream"
    for last_event_id in (b"\xb2", "²".encode(), b"9" * 5000, b"0" * 5000 + b"1", b"-" + b"9" * 5000):
        events = read_sse(server.http, url, headers={"Last-Event-ID": last_event_id}, timeout=60)
        assert [e[0] for e in events] == ["status", "complete"], (last_event_id[:8], events)


# ----------------------------------------------------------------------------- query parameters (found by schemathesis)


@pytest.mark.parametrize(("url", "field"), [
    ("/api/projects?offset=9223372036854775808", "offset"),  # past SQLite's largest integer
    ("/api/datasets/{pid}/images?offset=99999999999999999999", "offset"),
    ("/api/evaluation/{pid}/eval-000000000000/samples?cell=" + "9" * 5000 + ",1", "cell"),  # int() takes 4300
])
def test_out_of_range_query_values_are_a_422_naming_the_parameter(app, url, field):
    pid = create_project(app)
    message = error_of(app.get(url.format(pid=pid)), 422, "VALIDATION_ERROR")
    assert message.startswith(f"Invalid request — {field}:"), message
