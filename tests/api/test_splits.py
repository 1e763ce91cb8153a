"""Splits API: validation, determinism, stratification, counts, delete and its 409."""

from __future__ import annotations

import pytest

from appliance.store.db import session_scope
from appliance.store.tables import Experiment
from tests.pg import both_backends
from tests.htmlq import parse
from tests.fixtures import (
    create_project,
    import_and_wait,
    list_all_images,
    make_classification_folder,
    make_detection_coco,
)

SUBSETS = ("train", "val", "test")


def body(**overrides) -> dict:
    return {"name": "s", "train": 0.7, "val": 0.2, "test": 0.1, "seed": 42, "stratified": True, **overrides}


def create(client, pid, **overrides) -> dict:
    r = client.post(f"/api/splits/{pid}", json=body(**overrides))
    assert r.status_code == 201, r.text
    return r.json()["data"]


def assignment(client, pid, split_id) -> dict[str, str]:
    """image original_name → subset, read back through the per-subset image filter."""
    out = {}
    for sub in SUBSETS:
        for im in list_all_images(client, pid, split_id=split_id, subset=sub):
            assert im["original_name"] not in out
            out[im["original_name"]] = sub
    return out


@pytest.fixture
def root(settings):
    return settings.allowed_import_roots[0]


@pytest.fixture
def balanced(client, root):
    """Classification: red, blue, green, 20 images each."""
    pid = create_project(client)
    gen = make_classification_folder(root / "bal", classes=("red", "blue", "green"), per_class=20)
    assert import_and_wait(client, pid, gen.root)["added"] == 60
    return pid


@pytest.mark.parametrize("overrides, field", [
    ({"train": 0.5, "val": 0.2, "test": 0.2}, "sum to 1"),
    ({"train": 0.6, "val": 0.3, "test": 0.3}, "sum to 1"),
    ({"train": 1.2, "val": -0.1, "test": -0.1}, "train"),
    ({"train": 0.8, "val": -0.1, "test": 0.3}, "val"),
    ({"train": 0.0, "val": 0.5, "test": 0.5}, "train must be > 0"),
    ({"seed": -1}, "seed"),
    ({"name": ""}, "name"),
    ({"train": "lots"}, "train"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_bodies_are_422(client, balanced, overrides, field):
    r = client.post(f"/api/splits/{balanced}", json=body(**overrides))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR" and field in err["message"], err
    assert client.get(f"/api/splits/{balanced}").json()["data"] == []


def test_missing_ratio_is_422(client, balanced):
    r = client.post(f"/api/splits/{balanced}", json={"name": "s", "train": 0.8, "val": 0.2})
    assert r.status_code == 422 and "test" in r.json()["error"]["message"]


def test_split_of_an_empty_project_is_422(client):
    pid = create_project(client)
    r = client.post(f"/api/splits/{pid}", json=body())
    assert r.status_code == 422 and "no images" in r.json()["error"]["message"]


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_counts_and_record(client, balanced):
    s = create(client, balanced, name="70/20/10", train=0.7, val=0.2, test=0.1, seed=1)
    assert s["id"].startswith("split-") and s["name"] == "70/20/10"
    assert s["ratios"] == {"train": 0.7, "val": 0.2, "test": 0.1} and s["seed"] == 1 and s["stratified"] is True
    counts = s["counts"]
    assert counts["classes"] == ["blue", "green", "red"]
    assert counts["total"] == {"train": 42, "val": 12, "test": 6}
    for cls in counts["classes"]:  # stratified: exactly 14 / 4 / 2 of each class
        assert [counts["per_class"][sub][cls] for sub in SUBSETS] == [14, 4, 2]
    fetched = client.get(f"/api/splits/{balanced}/{s['id']}").json()["data"]
    assert fetched["counts"] == counts and fetched["id"] == s["id"]
    listed = client.get(f"/api/splits/{balanced}").json()["data"]
    assert [x["id"] for x in listed] == [s["id"]]
    # the per-subset image filter agrees with the counts
    got = assignment(client, balanced, s["id"])
    assert len(got) == 60
    for sub in SUBSETS:
        assert sum(1 for v in got.values() if v == sub) == counts["total"][sub]


def test_deterministic_for_a_seed_and_different_for_another(client, balanced):
    a = create(client, balanced, name="a", seed=7)
    b = create(client, balanced, name="b", seed=7)
    c = create(client, balanced, name="c", seed=8)
    first, second, third = (assignment(client, balanced, s["id"]) for s in (a, b, c))
    assert first == second
    assert first != third
    assert a["counts"] == b["counts"]
    d = create(client, balanced, name="d", seed=7, stratified=False)
    e = create(client, balanced, name="e", seed=7, stratified=False)
    assert assignment(client, balanced, d["id"]) == assignment(client, balanced, e["id"])


def test_stratified_keeps_every_class_in_train(client, root):
    pid = create_project(client)
    make_classification_folder(root / "imb", classes=("red",), per_class=40)
    make_classification_folder(root / "imb", classes=("blue",), per_class=3, seed=2)
    make_classification_folder(root / "imb", classes=("green",), per_class=1, seed=3)
    assert import_and_wait(client, pid, root / "imb")["added"] == 44
    for seed in range(5):
        s = create(client, pid, name=f"s{seed}", train=0.5, val=0.25, test=0.25, seed=seed)
        per = s["counts"]["per_class"]
        assert per["train"]["green"] == 1 and per["train"]["blue"] >= 1
        # a class with at least three images has one in every subset
        assert per["val"]["blue"] == 1 and per["test"]["blue"] == 1
        assert (per["train"]["red"], per["val"]["red"], per["test"]["red"]) == (20, 10, 10)


def test_unstratified_split_still_cuts_by_ratio(client, balanced):
    s = create(client, balanced, stratified=False, train=0.5, val=0.5, test=0.0, seed=3)
    assert s["counts"]["total"] == {"train": 30, "val": 30, "test": 0}
    assert s["stratified"] is False


def test_detection_stratifies_by_dominant_class(client, root):
    gen = make_detection_coco(root / "det", n=12, classes=("red", "blue", "green"), background=3)
    pid = create_project(client, "detection")
    assert import_and_wait(client, pid, gen.root)["added"] == 15
    s = create(client, pid, train=0.5, val=0.25, test=0.25, seed=11)
    counts = s["counts"]
    assert counts["classes"] == ["(no boxes)", "blue", "green", "red"]
    for cls in ("blue", "green", "red"):  # 4 images each → 2 / 1 / 1
        assert [counts["per_class"][sub].get(cls, 0) for sub in SUBSETS] == [2, 1, 1], cls
    assert [counts["per_class"][sub].get("(no boxes)", 0) for sub in SUBSETS] == [1, 1, 1]
    # the dominant class of each image is the one its boxes name
    names = {im["original_name"]: im for im in list_all_images(client, pid)}
    for sub in SUBSETS:
        for im in list_all_images(client, pid, split_id=s["id"], subset=sub, label="red"):
            assert im["boxes"][0]["label"] == "red"
    assert len(names) == 15


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_detection_counts_every_box_class_of_an_image(client, root):
    """Issue #13 item 2: a detection image's stratum is the set of its classes, and the counts name
    every class (before, only each image's most frequent box class, here 'car', was counted)."""
    from PIL import Image as PILImage

    folder = root / "dom"
    folder.mkdir()
    rows = ["filename,xmin,ymin,xmax,ymax,label"]
    for i in range(6):  # each image: two 'car' boxes and one 'person' box → stratum 'car+person'
        PILImage.new("RGB", (40, 40), (i * 20, 10, 10)).save(folder / f"{i}.png")
        rows += [f"{i}.png,1,1,10,10,car", f"{i}.png,12,12,20,20,car", f"{i}.png,2,20,10,30,person"]
    (folder / "boxes.csv").write_text("\n".join(rows) + "\n")
    pid = create_project(client, "detection")
    assert import_and_wait(client, pid, folder)["added"] == 6
    s = create(client, pid, train=0.5, val=0.5, test=0.0)
    assert s["counts"]["classes"] == ["car", "person"]
    assert s["counts"]["per_class"]["train"] == {"car": 3, "person": 3} == s["counts"]["per_class"]["val"]
    assert s["counts"]["total"] == {"train": 3, "val": 3, "test": 0} and s["warnings"] == []


@both_backends  # also on PostgreSQL (issue #15 item 3)
def test_delete_split(client, balanced):
    s = create(client, balanced)
    r = client.delete(f"/api/splits/{balanced}/{s['id']}")
    assert r.json() == {"status": "ok", "data": {"id": s["id"], "deleted": True}}
    assert client.get(f"/api/splits/{balanced}").json()["data"] == []
    assert client.get(f"/api/splits/{balanced}/{s['id']}").status_code == 404
    assert client.get(f"/api/datasets/{balanced}/images?split_id={s['id']}").status_code == 404
    assert client.delete(f"/api/splits/{balanced}/{s['id']}").status_code == 404
    assert client.get(f"/api/datasets/{balanced}").json()["data"]["image_count"] == 60  # images stay


@both_backends  # also on PostgreSQL (issue #15 item 3)
@pytest.mark.parametrize("status", ["running", "queued", "completed"])
def test_delete_refused_while_an_experiment_uses_the_split(client, settings, balanced, status):
    s = create(client, balanced)
    with session_scope(settings.db_url) as db:
        db.add(Experiment(id="exp-0123456789ab", project_id=balanced, split_id=s["id"], name="Baseline run",
                          model="resnet18", status=status))
    r = client.delete(f"/api/splits/{balanced}/{s['id']}")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    # issue #13 item 13: the experiment by its name, not its id
    assert err["code"] == "CONFLICT" and '"Baseline run"' in err["message"] and "exp-0123456789ab" not in err["message"]
    if status in ("running", "queued"):
        assert "training" in err["message"]
    assert client.get(f"/api/splits/{balanced}/{s['id']}").status_code == 200


def test_unknown_ids_are_404(client, balanced):
    other = create_project(client, name="other")
    s = create(client, balanced)
    for url in (f"/api/splits/{balanced}/split-000000000000", f"/api/splits/{balanced}/nope",
                f"/api/splits/{other}/{s['id']}", "/api/splits/proj-000000000000", f"/api/splits/{balanced}/%2e%2e"):
        r = client.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", url
    assert client.delete(f"/api/splits/{other}/{s['id']}").status_code == 404
    assert client.post("/api/splits/proj-000000000000", json=body()).status_code == 404


def counts_table(article) -> dict[str, dict[str, int]]:
    """class → subset → count, as the split card's table shows them."""
    return {row.attrs["data-class"]: {td.attrs["data-subset"]: int(td.text) for td in row.select("td[data-subset]")}
            for row in article.select("tbody tr[data-class]")}


def test_split_fragments_for_htmx(client, balanced):
    hx = {"HX-Request": "true"}
    r = client.post(f"/api/splits/{balanced}", json=body(name="frag"), headers=hx)
    assert r.status_code == 201
    html = parse(r.text)
    assert not html.select("html")  # a fragment for the split list, not a page
    split = client.get(f"/api/splits/{balanced}").json()["data"][0]
    card = html.select_one(f"article[data-split-id={split['id']}]")
    assert card.select_one("h2").text.startswith("frag")
    # the card's table shows the split's own counts, class by class (70/20/10 of 20 each)
    assert counts_table(card) == {cls: {sub: split["counts"]["per_class"][sub][cls] for sub in SUBSETS}
                                  for cls in ("red", "blue", "green")}
    assert counts_table(card)["red"] == {"train": 14, "val": 4, "test": 2}
    totals = {th.attrs["data-subset"]: int(th.text) for th in card.select("tfoot th[data-subset]")}
    assert totals == {"train": 42, "val": 12, "test": 6}
    page = parse(client.get(f"/projects/{balanced}/split").text)
    assert page.select_one("form#create-split") and page.select(f"article[data-split-id={split['id']}]")
    r = client.delete(f"/api/splits/{balanced}/{split['id']}", headers=hx)
    assert r.status_code == 200
    assert not parse(r.text).select("article") and parse(r.text).select_one(".empty")
