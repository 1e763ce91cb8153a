"""Issue #15 item 3: what SQLite takes and PostgreSQL refuses is refused (or made storable) the same way
on both — every test here runs on SQLite and on a fresh PostgreSQL database (`tests.pg.both_backends`).

- A NUL character in a name a body stores: 422 naming the field (PostgreSQL's text cannot hold it).
- NaN / infinity in a JSON column (a diverged loss): stored as null (PostgreSQL's json refuses them, and
  the API's JSON encoder would fail the response).
- Labels longer than their column, or with a NUL, and paths longer than theirs: the image is skipped
  with a warning naming it, the rest of the import goes in.
"""

from __future__ import annotations

import math

import pytest

from appliance.store import runs
from appliance.store.db import session_scope
from appliance.store.ids import new_id
from appliance.store.tables import EpochRecord, Experiment, Split
from tests.fixtures import create_project, import_and_wait, list_all_images, make_classification_csv
from tests.pg import both_backends

pytestmark = both_backends


@pytest.mark.parametrize("field", ["name", "description"])
def test_a_nul_character_in_a_stored_name_is_a_422_naming_the_field(client, field):
    body = {"name": "Cats", "task": "classification", field: "Ca\x00ts"}
    r = client.post("/api/projects", json=body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert f"{field}:" in message and "NUL" in message, message
    pid = create_project(client)
    r = client.patch(f"/api/projects/{pid}", json={field: "x\x00"})
    assert r.status_code == 422 and f"{field}:" in r.json()["error"]["message"], r.text
    assert [p["name"] for p in client.get("/api/projects").json()["data"]["items"]] == ["classification test"]


def test_non_finite_metrics_are_stored_as_null(client, settings):
    pid = create_project(client)
    sid, eid = new_id("split"), new_id("experiment")
    with session_scope(settings.db_url) as s:
        s.add(Split(id=sid, project_id=pid, name="s", train=0.8, val=0.2, test=0.0, seed=1, counts={}))
        s.flush()
        s.add(Experiment(id=eid, project_id=pid, split_id=sid, name="diverged", model="resnet18",
                         params={"epochs": 2}, class_names=["a", "b"]))
    runs.record_epoch(settings.db_url, eid, {"epoch": 1, "train_loss": math.inf, "val_loss": math.nan,
                                             "val_metric": math.nan, "per_class": [0.5, -math.inf]})
    with session_scope(settings.db_url) as s:
        metrics = s.get(EpochRecord, (eid, 1)).metrics
        best = s.get(Experiment, eid).best_metric
    assert metrics == {"epoch": 1, "train_loss": None, "val_loss": None, "val_metric": None,
                       "per_class": [0.5, None]}
    assert best is None


def test_labels_and_paths_the_store_cannot_hold_skip_their_image_with_a_warning(client, settings):
    root = settings.allowed_import_roots[0]
    ds = make_classification_csv(root / "ds", per_class=2)
    csv_path = next(ds.root.glob("*.csv"))
    rows = csv_path.read_text().splitlines()
    long_label, nul_label = "x" * 201, "a\x00b"
    first, second = rows[1].split(",")[0], rows[2].split(",")[0]
    rows[1], rows[2] = f"{first},{long_label}", f"{second},{nul_label}"
    csv_path.write_text("\n".join(rows) + "\n")
    pid = create_project(client)
    job = import_and_wait(client, pid, ds.root, "csv")
    assert job["status"] == "completed" and job["added"] == len(rows) - 3, job
    assert "a\\u0000b" in job["detected"], job  # the layout sentence quotes the classes: kept, escaped
    reasons = {w["file"]: w["reason"] for w in job["warnings"]}
    assert reasons == {f"images/{first}": "a label is longer than 200 characters; skipped",
                       f"images/{second}": "a label contains a NUL character (\\u0000); skipped"}, reasons
    labels = {im["label"] for im in list_all_images(client, pid)}
    assert long_label not in labels and nul_label not in labels and labels
