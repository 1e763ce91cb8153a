"""Issue #14 item 2, browsing 100k images: keyset pages of the image list, thumbnails served as
static files (immutable, ETag / 304, no database on the hot path), bad values named, the dataset
summary from SQL aggregates, and the evaluation sample filters in SQL.

One small dataset (120 tiny images, 3 classes, one split) is imported once for the module, in
process (no Ray).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from appliance.config import Settings
from tests.fixtures import create_project, import_and_wait, list_all_images, make_classification_folder
from tests.pg import both_backends

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def browse(tmp_path_factory):
    """(client, project id, split id, settings) over a 120-image classification project."""
    from appliance.main import create_app

    tmp = tmp_path_factory.mktemp("browse14")
    (tmp / "imports").mkdir()
    settings = Settings(workspace=tmp / "ws", import_roots=[tmp / "imports"], api_token=None)
    gen = make_classification_folder(tmp / "imports" / "ds", classes=CLASSES, per_class=40, size=16, seed=14)
    with TestClient(create_app(settings)) as client:
        pid = create_project(client, name="browse 14")
        assert import_and_wait(client, pid, gen.root, timeout=120)["added"] == 120
        split = client.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.6, "val": 0.2, "test": 0.2,
                                                        "seed": 1}).json()["data"]
        yield client, pid, split["id"], settings


def walk(client, pid: str, limit: int, **filters) -> tuple[list[str], int]:
    """Every page by `next_cursor`: the ids in order, and the total the pages said."""
    ids, cursor, totals = [], None, set()
    for _ in range(1000):
        params = {"limit": limit, **filters, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/api/datasets/{pid}/images", params=params)
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        assert len(page["items"]) <= limit
        ids += [im["id"] for im in page["items"]]
        totals.add(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(totals) == 1
    return ids, totals.pop()


@pytest.mark.parametrize("filters", [{}, {"label": "red"}, {"subset": "val"}, {"subset": "train", "label": "blue"}],
                         ids=["all", "label", "subset", "subset+label"])
def test_keyset_walk_returns_every_image_once_in_order(browse, filters):
    client, pid, sid, _ = browse
    if "subset" in filters:
        filters = {**filters, "split_id": sid}
    ids, total = walk(client, pid, 7, **filters)
    by_offset = [im["id"] for im in list_all_images(client, pid, **filters)]  # the offset pages, same order
    assert ids == by_offset and len(set(ids)) == len(ids) == total
    assert total == (120 if not filters else len(by_offset)) and total > 0
    if "label" in filters:
        records = {im["id"]: im for im in list_all_images(client, pid)}
        assert all(records[i]["label"] == filters["label"] for i in ids)
        assert total == 40 or "subset" in filters
    # a page in the middle: the same images by cursor as by offset
    first = client.get(f"/api/datasets/{pid}/images", params={"limit": 10, **filters}).json()["data"]
    second = client.get(f"/api/datasets/{pid}/images",
                        params={"limit": 10, "cursor": first["next_cursor"], **filters}).json()["data"]
    assert [im["id"] for im in second["items"]] == by_offset[10:20]


def test_grid_fragment_pages_by_cursor(browse):
    client, pid, _, _ = browse
    from tests.htmlq import parse

    hx = {"HX-Request": "true"}
    first = parse(client.get(f"/api/datasets/{pid}/images?limit=48", headers=hx).text)
    nxt = first.select_one("#grid-next").attrs["hx-get"]
    assert "cursor=" in nxt and "offset=" not in nxt
    imgs = first.select("#image-grid .thumb img") or first.select(".thumb img")
    assert imgs and all(i.attrs.get("loading") == "lazy" and int(i.attrs["width"]) > 0 and int(i.attrs["height"]) > 0
                        for i in imgs)
    second = parse(client.get(nxt.replace("&amp;", "&"), headers=hx).text)
    assert "Images 49–96 of 120" in second.select_one("#grid-range").text
    prev = second.select_one("#grid-prev")
    assert "disabled" not in prev.attrs and "cursor=" not in prev.attrs["hx-get"]  # back to the first page
    third = parse(client.get(second.select_one("#grid-next").attrs["hx-get"], headers=hx).text)
    assert "Images 97–120 of 120" in third.select_one("#grid-range").text
    assert "disabled" in third.select_one("#grid-next").attrs
    back = parse(client.get(third.select_one("#grid-prev").attrs["hx-get"], headers=hx).text)
    assert ([t.attrs["data-image-id"] for t in back.select(".thumb")]
            == [t.attrs["data-image-id"] for t in second.select(".thumb")])


def _field_error(r, status: int, field: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == "error" and field in body["error"]["message"], body
    return body["error"]["message"]


def test_bad_list_values_are_named(browse):
    client, pid, sid, _ = browse
    url = f"/api/datasets/{pid}/images"
    for cursor in ("garbage", "e30", "W10", "WyJ4IiwieSJd", "A" * 201):
        _field_error(client.get(url, params={"cursor": cursor}), 422, "cursor")
    good = client.get(url, params={"limit": 5}).json()["data"]["next_cursor"]
    _field_error(client.get(url, params={"cursor": good, "offset": 5}), 422, "offset")
    for limit in (0, -1, 501, 10**30, "many"):
        _field_error(client.get(url, params={"limit": limit}), 422, "limit")
    for offset in (-1, 2**63, "x"):
        _field_error(client.get(url, params={"offset": offset}), 422, "offset")
    _field_error(client.get(url, params={"subset": "holdout", "split_id": sid}), 422, "subset")
    _field_error(client.get(url, params={"subset": "val"}), 422, "subset")
    _field_error(client.get(url, params={"issue": "blurry"}), 422, "issue")
    _field_error(client.get(url, params={"label": "x" * 201}), 422, "label")
    assert client.get(url, params={"split_id": "split-000000000000"}).status_code == 404
    # an unknown class matches nothing (an empty page, not an error: the class may come back)
    assert client.get(url, params={"label": "purple"}).json()["data"]["total"] == 0


def test_thumbnails_are_immutable_static_files_with_304(browse, monkeypatch):
    client, pid, _, _ = browse
    im = client.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
    assert im["thumbnail_url"].endswith(f"/thumbnail/{im['filename']}?v={im['sha256'][:16]}")
    from appliance.services import thumbnails

    def no_database(*a, **k):
        raise AssertionError("the hot path looked the image up")
    monkeypatch.setattr(thumbnails, "thumbnail_target", no_database)
    r = client.get(im["thumbnail_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = r.headers["etag"]
    again = client.get(im["thumbnail_url"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert "immutable" in again.headers["cache-control"]
    listed = client.get(im["thumbnail_url"], headers={"If-None-Match": f'"other", W/{etag}'})
    assert listed.status_code == 304
    assert client.get(im["thumbnail_url"], headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(im["thumbnail_url"].split("?")[0]).status_code == 200  # the version only keys caches
    _field_error(client.get(im["thumbnail_url"].split("?")[0] + "?v=../x"), 422, "v")


def test_thumbnail_bad_names_never_leave_the_project(browse):
    client, pid, _, settings = browse
    im = client.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
    (settings.workspace / "secret.jpg").write_bytes(b"\xff\xd8secret")  # one level above projects/<pid>/
    base = f"/api/datasets/{pid}/thumbnail/"
    for name in ("%2e%2e", "..%2F..%2F..%2Fsecret.jpg", "%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.jpg",
                 "..%5C..%5Csecret.jpg", ".thumbs", "." + im["filename"], im["filename"] + "%00",
                 "%2Fetc%2Fpasswd", "img-000000000000.jpg", "aistudio.db", f"..%2Fimages%2F{im['filename']}"):
        r = client.get(base + name)
        assert r.status_code == 404, (name, r.status_code)
        assert r.json()["status"] == "error" and str(settings.workspace) not in r.text
        assert not r.content.startswith(b"\xff\xd8")  # never the file above the project


def test_summary_counts_come_from_sql(browse):
    client, pid, _, _ = browse
    data = client.get(f"/api/datasets/{pid}").json()["data"]
    images = list_all_images(client, pid)
    assert data["image_count"] == 120 and data["images_without_labels"] == 0
    assert {c["name"]: c["images"] for c in data["classes"]} == {c: 40 for c in CLASSES}
    widths = sorted(im["width"] for im in images)
    assert data["width"] == {"min": widths[0], "max": widths[-1], "mean": round(sum(widths) / 120, 3),
                             "median": (widths[59] + widths[60]) / 2}


# ----------------------------------------------------------------------------- evaluation samples

def _evaluation(settings: Settings, pid: str, sid: str, task: str, records: list[dict], samples: list[dict],
                labels: list[str]) -> str:
    """A completed evaluation whose samples are stored by the real storage function."""
    from appliance.store import evaluations
    from appliance.store.db import session_scope
    from appliance.store.ids import new_id
    from appliance.store.tables import Evaluation, Experiment

    eid, evid = new_id("experiment"), new_id("evaluation")
    with session_scope(settings.db_url) as s:
        s.add(Experiment(id=eid, project_id=pid, split_id=sid, name=f"e-{evid}", model="resnet18",
                         params={"task": task}, class_names=labels, status="completed"))
        s.flush()
        s.add(Evaluation(id=evid, project_id=pid, experiment_id=eid, subset="test", checkpoint="best",
                         status="running", total=len(samples)))
    metrics = {"task": task, "confusion_matrix": {"labels": labels + (["background"] if task == "detection" else [])}}
    evaluations.save_results(settings.db_url, evid, metrics, records, samples)
    return evid


def test_confusion_cell_filter_in_sql(browse):
    client, pid, sid, settings = browse
    images = list_all_images(client, pid)[:90]
    names = list(CLASSES)
    samples = [{"image_id": im["id"], "filename": im["filename"], "width": im["width"], "height": im["height"]}
               for im in images]
    records, want = [], {}
    for i in range(90):
        t, p = i % 3, (i * 7 // 3) % 3
        records.append({"index": i, "id": i, "true": t, "true_name": names[t], "pred": p, "pred_name": names[p],
                        "score": 0.5, "true_score": 0.25, "correct": t == p, "cell": [t, p], "is_error": t != p,
                        "top": [{"index": p, "name": names[p], "score": 0.5}]})
        want.setdefault((t, p), []).append(i)
    evid = _evaluation(settings, pid, sid, "classification", records, samples, names)
    from appliance.store.tables import EvalSample

    loaded = []
    listener = lambda target, context: loaded.append(target)  # noqa: E731
    event.listen(EvalSample, "load", listener)
    try:
        for (t, p), members in want.items():
            got, offset, total = [], 0, None
            while True:
                r = client.get(f"/api/evaluation/{pid}/{evid}/samples",
                               params={"kind": "all", "cell": f"{t},{p}", "limit": 4, "offset": offset})
                assert r.status_code == 200, r.text
                page = r.json()["data"]
                total = page["total"]
                got += page["items"]
                offset += 4
                if offset >= total:
                    break
            assert total == len(members)
            assert [s["image_id"] for s in got] == [images[i]["id"] for i in members]  # rank order = record order
            assert all(s["thumbnail_url"].endswith("?v=" + images[i]["sha256"][:16]) for s, i in zip(got, members))
            errors = client.get(f"/api/evaluation/{pid}/{evid}/samples", params={"cell": f"{t},{p}"}).json()["data"]
            assert errors["total"] == (0 if t == p else len(members))
    finally:
        event.remove(EvalSample, "load", listener)
    assert len(loaded) <= 4 * 60  # only the pages shown were loaded, never the whole evaluation per request
    assert client.get(f"/api/evaluation/{pid}/{evid}/samples",
                      params={"kind": "all", "cell": "7,7"}).json()["data"]["total"] == 0
    r = client.get(f"/api/evaluation/{pid}/{evid}/samples", params={"cell": "1;2"})
    _field_error(r, 422, "cell")


def test_detection_cells_and_classes_in_sql(browse):
    client, pid, sid, settings = browse
    images = list_all_images(client, pid)[:6]
    samples = [{"image_id": im["id"], "filename": im["filename"], "width": 16, "height": 16} for im in images]
    bg = 2  # background index for two classes
    layouts = [  # (gt labels, pred labels, cells)
        ([0], [0], [[0, 0]]), ([1], [0], [[1, 0]]), ([0, 1], [1], [[0, bg], [1, 1]]),
        ([], [1], [[bg, 1]]), ([1], [], [[1, bg]]), ([0], [0, 0], [[0, 0], [bg, 0]]),
    ]
    records = [{"index": i, "id": i, "num_gt": len(g), "num_pred": len(p), "missed": 0, "false_positives": 0,
                "mislabeled": 0, "errors": 0, "max_score": 0.5, "cells": c, "is_error": i > 0,
                "gt": {"labels": g, "boxes": [[0, 0, 4, 4]] * len(g)},
                "pred": {"labels": p, "boxes": [[0, 0, 4, 4]] * len(p), "scores": [0.5] * len(p)}}
               for i, (g, p, c) in enumerate(layouts)]
    evid = _evaluation(settings, pid, sid, "detection", records, samples, ["red", "green"])
    url = f"/api/evaluation/{pid}/{evid}/samples"

    def ids(**params):
        page = client.get(url, params={"kind": "all", "limit": 50, **params}).json()["data"]
        assert page["total"] == len(page["items"])
        return [s["image_id"] for s in page["items"]]

    want = lambda *idx: [images[i]["id"] for i in idx]  # noqa: E731
    assert ids(cell="0,0") == want(0, 5)
    assert ids(cell=f"{bg},0") == want(5)
    assert ids(cell=f"1,{bg}") == want(4)
    assert ids(cell=f"0,{bg}") == want(2)
    assert ids(label="red") == want(0, 1, 2, 5)
    assert ids(label="green") == want(1, 2, 3, 4)
    assert ids(label="green", cell="1,1") == want(2)
    assert ids(label="nothing") == []


def test_existing_samples_get_their_cells_on_upgrade(tmp_path):
    """Samples stored before revision 0003_browse (payload only) are found by the SQL filters after it."""
    from sqlalchemy import create_engine, text

    from alembic import command

    from appliance.store.db import alembic_config, head_revision, migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002_export_size_bigint")
    with engine.begin() as c:
        c.execute(text("INSERT INTO projects (id, name, task, description, created_at, updated_at) "
                       "VALUES ('proj-aaaaaaaaaaaa', 'p', 'classification', '', '2026-01-01', '2026-01-01')"))
        c.execute(text("INSERT INTO splits (id, project_id, name, train, val, test, seed, stratified, from_source, "
                       "counts, created_at) VALUES ('split-aaaaaaaaaaaa', 'proj-aaaaaaaaaaaa', 's', 1, 0, 0, 0, 1, 0, "
                       "'{}', '2026-01-01')"))
        c.execute(text("INSERT INTO experiments (id, project_id, split_id, name, model, params, class_names, status, "
                       "epochs_done, created_at, run_seconds) VALUES ('exp-aaaaaaaaaaaa', 'proj-aaaaaaaaaaaa', "
                       "'split-aaaaaaaaaaaa', 'e', 'm', '{}', '[]', 'completed', 1, '2026-01-01', 0)"))
        c.execute(text("INSERT INTO evaluations (id, project_id, experiment_id, subset, checkpoint, status, done, "
                       "total, metrics, created_at) VALUES ('eval-aaaaaaaaaaaa', 'proj-aaaaaaaaaaaa', "
                       "'exp-aaaaaaaaaaaa', 'test', 'best', 'completed', 2, 2, '{}', '2026-01-01')"))
        for i, payload in enumerate(('{"cell": [1, 0]}', '{"cells": [[0, 2], [1, 1]], "gt": {"labels": [0, 1]}, '
                                                          '"pred": {"labels": [1]}}')):
            c.execute(text("INSERT INTO eval_samples (evaluation_id, image_id, rank, is_error, payload) "
                           f"VALUES ('eval-aaaaaaaaaaaa', 'img-{i:012d}', {i}, 1, :p)"), {"p": payload})
    assert migrate(engine) == head_revision()
    with engine.connect() as c:
        cells = set(c.execute(text("SELECT image_id, truth, pred FROM eval_sample_cells")).all())
        classes = set(c.execute(text("SELECT image_id, class_index FROM eval_sample_classes")).all())
    engine.dispose()
    assert cells == {("img-000000000000", 1, 0), ("img-000000000001", 0, 2), ("img-000000000001", 1, 1)}
    assert classes == {("img-000000000001", 0), ("img-000000000001", 1)}


def test_indexes_serve_the_filters(browse):
    """SQLite's plan for each list filter uses one of the browse indexes, never a scan of every image."""
    client, pid, sid, settings = browse
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.db_url)
    queries = {
        "order": "SELECT id FROM images WHERE project_id = :p ORDER BY created_at, id LIMIT 48",
        "label": "SELECT id FROM images WHERE project_id = :p AND label = 'red' ORDER BY created_at, id LIMIT 48",
        "tiny": "SELECT count(*) FROM images WHERE project_id = :p AND (width < 32 OR height < 32)",
        "subset": "SELECT image_id FROM split_assignments WHERE split_id = :s AND subset = 'val'",
        "box class": "SELECT image_id FROM boxes WHERE label = 'red'",
    }
    with engine.connect() as c:
        for name, sql in queries.items():
            plan = " ".join(str(row[-1]) for row in c.execute(text("EXPLAIN QUERY PLAN " + sql), {"p": pid, "s": sid}))
            assert "USING" in plan and "INDEX" in plan, (name, plan)
            assert "TEMP B-TREE" not in plan, (name, plan)
    engine.dispose()
    assert Path(settings.db_url.split("///", 1)[1]).is_file()


@both_backends
def test_keyset_and_cell_filter_on_both_backends(client, settings):
    """The row-value cursor comparison and the side-table filters, also on PostgreSQL."""
    gen = make_classification_folder(settings.import_roots[0] / "pg", classes=("red", "blue"), per_class=6, size=16)
    pid = create_project(client, name="keyset backends")
    assert import_and_wait(client, pid, gen.root)["added"] == 12
    for filters in ({}, {"label": "red"}):
        ids, total = walk(client, pid, 5, **filters)
        assert ids == [im["id"] for im in list_all_images(client, pid, **filters)] and len(set(ids)) == total
    sid = client.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.5, "test": 0}).json()["data"]["id"]
    images = list_all_images(client, pid)
    samples = [{"image_id": im["id"], "filename": im["filename"], "width": 16, "height": 16} for im in images]
    records = [{"index": i, "id": i, "true": i % 2, "true_name": "rb"[i % 2], "pred": 0, "pred_name": "r",
                "score": 0.5, "true_score": 0.5, "correct": i % 2 == 0, "cell": [i % 2, 0], "is_error": i % 2 == 1,
                "top": []} for i in range(12)]
    evid = _evaluation(settings, pid, sid, "classification", records, samples, ["r", "b"])
    page = client.get(f"/api/evaluation/{pid}/{evid}/samples", params={"kind": "all", "cell": "1,0", "limit": 4}).json()
    assert page["data"]["total"] == 6 and [s["image_id"] for s in page["data"]["items"]] == [
        images[i]["id"] for i in (1, 3, 5, 7)]
