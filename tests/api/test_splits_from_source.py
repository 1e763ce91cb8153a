"""Issue #13 items 2 and 6 through the API: split totals that follow the ratios on small and detection
sets, with `warnings`, and the split "as imported" (`from_source`) from the subsets the import recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.fixtures import (
    class_image,
    colour_of,
    create_project,
    import_and_wait,
    list_all_images,
    make_classification_folder,
    make_detection_yolo,
    save_image,
    zip_dir,
)
from tests.htmlq import parse

SUBSETS = ("train", "val", "test")


@pytest.fixture
def root(settings):
    return settings.allowed_import_roots[0]


def create(client, pid, **body) -> dict:
    r = client.post(f"/api/splits/{pid}", json={"name": "s", **body})
    assert r.status_code == 201, r.text
    return r.json()["data"]


def subsets_by_path(client, pid, split_id) -> dict[str, str]:
    return {im["original_name"]: sub for sub in SUBSETS
            for im in list_all_images(client, pid, split_id=split_id, subset=sub)}


def ten_classes_of_two(folder: Path) -> Path:
    import random

    rng = random.Random(0)
    for c in range(10):
        for i in range(2):
            save_image(class_image(colour_of(f"k{c}"), 16, rng), folder / f"class{c}" / f"{i}.jpg")
    return folder


# ----------------------------------------------------------------------------- item 2: ratios and warnings


def test_twenty_images_in_ten_classes_follow_the_ratios_and_warn(client, root):
    """The issue's case: 0.5/0.25/0.25 over 20 images in 10 classes gave 10/10/0 and no warning."""
    pid = create_project(client)
    assert import_and_wait(client, pid, ten_classes_of_two(root / "ten"))["added"] == 20
    s = create(client, pid, train=0.5, val=0.25, test=0.25, seed=3)
    counts = s["counts"]
    assert counts["total"] == {"train": 10, "val": 5, "test": 5}
    assert all(counts["per_class"]["train"][c] == 1 for c in counts["classes"])
    missing_val = [c for c in counts["classes"] if c not in counts["per_class"]["val"]]
    missing_test = [c for c in counts["classes"] if c not in counts["per_class"]["test"]]
    assert s["warnings"] == [
        f"5 classes {', '.join(missing_val)} have no image in val (too few images of them to share).",
        f"5 classes {', '.join(missing_test)} have no image in test (too few images of them to share).",
    ]
    assert client.get(f"/api/splits/{pid}/{s['id']}").json()["data"]["warnings"] == s["warnings"]
    # The page shows the same warnings with the split.
    page = parse(client.get(f"/projects/{pid}/split").text)
    assert [li.text for li in page.select(f"[data-split-id='{s['id']}'] .split-warnings li")] == s["warnings"]


def test_an_empty_subset_the_user_asked_for_is_a_warning(client, root):
    pid = create_project(client)
    gen = make_classification_folder(root / "few", classes=("red", "blue"), per_class=2, size=16)
    assert import_and_wait(client, pid, gen.root)["added"] == 4
    s = create(client, pid, train=0.8, val=0.1, test=0.1)  # 3.2 / 0.4 / 0.4: val takes the spare image
    assert s["counts"]["total"] == {"train": 3, "val": 1, "test": 0}
    assert s["warnings"] == [
        f"Class {next(iter(s['counts']['per_class']['train'].keys() - s['counts']['per_class']['val']))} has no "
        "image in val (too few images of it to share).",
        "The test subset is empty: 10% of 4 images is less than one image. Add images or raise the test ratio.",
    ]
    assert create(client, pid, train=0.5, val=0.5, test=0.0)["warnings"] == []


def test_eight_detection_images_split_fifty_fifty(client, root):
    """The issue's case: 8 detection images at 50/50 gave 7/1; every box class stays in train."""
    folder = root / "det"
    folder.mkdir()
    rows = ["filename,xmin,ymin,xmax,ymax,label"]
    classes_of = [("car", "person"), ("car",), ("person", "dog"), ("car", "bus"), ("person",), ("car", "person"),
                  ("dog", "car"), ("person", "car")]
    for i, classes in enumerate(classes_of):
        PILImage.new("RGB", (40, 40), (i * 25, 10, 10)).save(folder / f"{i}.png")
        rows += [f"{i}.png,{2 + j * 10},2,{9 + j * 10},9,{c}" for j, c in enumerate(classes)]
    (folder / "boxes.csv").write_text("\n".join(rows) + "\n")
    pid = create_project(client, "detection")
    assert import_and_wait(client, pid, folder)["added"] == 8
    for seed in (0, 1, 42):
        s = create(client, pid, train=0.5, val=0.5, test=0.0, seed=seed)
        assert s["counts"]["total"] == {"train": 4, "val": 4, "test": 0}, seed
        assert s["counts"]["classes"] == ["bus", "car", "dog", "person"]
        assert all(s["counts"]["per_class"]["train"].get(c) for c in s["counts"]["classes"]), s["counts"]


# ----------------------------------------------------------------------------- item 6: as imported


@pytest.mark.parametrize("how", ["path", "zip"])
def test_split_as_imported_keeps_the_folder_subsets(client, root, tmp_path, how):
    """train/ and valid/ folders (valid means val), by path and in a ZIP: each image records its
    source subset, and the split "as imported" keeps them."""
    gen = make_classification_folder(root / "own", classes=("ants", "bees"), per_class=8, size=16, nested=True)
    (gen.root / "val").rename(gen.root / "valid")
    pid = create_project(client)
    source = gen.root if how == "path" else zip_dir(gen.root, tmp_path / "own.zip")
    assert import_and_wait(client, pid, source)["added"] == 16
    expected = {item.relpath.replace("val/", "valid/", 1): item.subset for item in gen.items}
    assert {im["original_name"]: im["subset_hint"] for im in list_all_images(client, pid)} == expected

    s = create(client, pid, from_source=True, name="as imported")
    assert s["from_source"] is True and s["name"] == "as imported"
    assert s["counts"]["total"] == {"train": 12, "val": 4, "test": 0}
    assert s["ratios"] == {"train": 0.75, "val": 0.25, "test": 0.0}
    assert s["counts"]["per_class"] == {"train": {"ants": 6, "bees": 6}, "val": {"ants": 2, "bees": 2}, "test": {}}
    assert s["warnings"] == []
    assert subsets_by_path(client, pid, s["id"]) == expected
    # A split by ratios says it is not from the source.
    assert create(client, pid, train=0.5, val=0.5, test=0.0)["from_source"] is False


def test_split_as_imported_from_yolo_train_val_folders(client, root, tmp_path):
    gen = make_detection_yolo(root / "y", n=8, size=48, split=True)
    pid = create_project(client, "detection")
    assert import_and_wait(client, pid, zip_dir(gen.root, tmp_path / "y.zip"))["added"] == 8
    s = create(client, pid, from_source=True)
    assert s["counts"]["total"] == {"train": 6, "val": 2, "test": 0}
    assert subsets_by_path(client, pid, s["id"]) == {item.relpath: item.subset for item in gen.items}


def test_images_without_a_source_subset_go_to_train(client, root):
    pid = create_project(client)
    nested = make_classification_folder(root / "own", per_class=4, size=16, nested=True)
    assert import_and_wait(client, pid, nested.root)["added"] == 8
    flat = make_classification_folder(root / "more", per_class=2, size=16, seed=5)
    assert import_and_wait(client, pid, flat.root)["added"] == 4
    s = create(client, pid, from_source=True)
    assert s["counts"]["total"] == {"train": 10, "val": 2, "test": 0}


def test_as_imported_needs_imported_subsets(client, root):
    pid = create_project(client)
    gen = make_classification_folder(root / "flat", per_class=3, size=16)
    assert import_and_wait(client, pid, gen.root)["added"] == 6
    r = client.post(f"/api/splits/{pid}", json={"name": "s", "from_source": True})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR" and err["message"].startswith("from_source: this project's images carry no")
    assert "ratios" in err["message"]
    assert client.get(f"/api/splits/{pid}").json()["data"] == []
    # No suggestion on the page then.
    assert not parse(client.get(f"/projects/{pid}/split").text).select("#as-imported-card")


@pytest.mark.parametrize("body, words", [
    ({"from_source": True, "train": 0.5, "val": 0.5, "test": 0.0}, ["from_source", "train, val, test"]),
    ({"from_source": True, "seed": 3}, ["from_source", "seed"]),
    ({"from_source": True, "stratified": False}, ["from_source", "stratified"]),
    ({"from_source": "yes"}, ["from_source"]),
    ({"from_source": 1}, ["from_source"]),
    ({"from_source": None}, ["from_source"]),
    ({"from_source": False}, ["train, val, test: required"]),
    ({"train": 0.8, "val": 0.2}, ["test: required"]),
    ({"from_source": True, "name": ""}, ["name"]),
])
def test_bad_from_source_bodies_are_422(client, root, body, words):
    pid = create_project(client)
    gen = make_classification_folder(root / "own", per_class=4, size=16, nested=True)
    assert import_and_wait(client, pid, gen.root)["added"] == 8
    r = client.post(f"/api/splits/{pid}", json={"name": "s", **body})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR" and all(w in err["message"] for w in words), err
    assert client.get(f"/api/splits/{pid}").json()["data"] == []


def test_the_split_page_suggests_the_imported_subsets(client, root):
    pid = create_project(client)
    gen = make_classification_folder(root / "own", per_class=4, size=16, nested=True)
    assert import_and_wait(client, pid, gen.root)["added"] == 8
    page = parse(client.get(f"/projects/{pid}/split").text)
    card = page.select("#as-imported-card")
    assert card and "train 6" in card[0].text and "val 2" in card[0].text
    form = page.select("#create-split-source")[0]
    assert form.attrs["hx-post"] == f"/api/splits/{pid}"
    assert page.select("#create-split-source input[name=from_source][checked]")
    assert "Or a new split by ratios" in page.select("#split-form-card h2")[0].text


def test_migration_adds_from_source_to_existing_splits(tmp_path):
    """A database from before #13 (no `splits.from_source`) upgrades in place; its splits read as
    splits by ratios."""
    import sqlite3

    from sqlalchemy import create_engine

    from appliance.services.splits import split_public
    from appliance.store.db import head_revision, migrate, session_factory
    from appliance.store.legacy_migrations import MIGRATIONS, _add_split_from_source, upgrade as legacy_upgrade
    from appliance.store.tables import Split

    added_in = MIGRATIONS.index(_add_split_from_source) + 1  # the version that brought the column

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with create_engine(url).begin() as conn:  # a database from a release before Alembic
        legacy_upgrade(conn)
    with sqlite3.connect(tmp_path / "old.db") as db:  # back to the schema before the migration
        db.execute("alter table splits drop column from_source")
        db.execute("delete from schema_version where version >= ?", (added_in,))
        db.execute("insert into projects (id, name, task, description, created_at, updated_at) values "
                   "('proj-000000000001', 'p', 'classification', '', '2026-01-01', '2026-01-01')")
        db.execute("insert into splits (id, project_id, name, train, val, test, seed, stratified, counts, created_at) "
                   "values ('split-000000000001', 'proj-000000000001', 'old', 0.5, 0.5, 0, 1, 1, ?, '2026-01-01')",
                   ('{"total": {"train": 1, "val": 1, "test": 0}, "per_class": {"train": {"a": 1}, '
                    '"val": {"a": 1}, "test": {}}, "classes": ["a"]}',))
    assert migrate(create_engine(url)) == head_revision()
    with session_factory(url)() as session:
        old = split_public(session.get(Split, "split-000000000001"))
    assert old["from_source"] is False and old["warnings"] == []
