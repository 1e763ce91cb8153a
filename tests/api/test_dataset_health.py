"""Issue 13, item 7 — "A health check worth running": perceptual hashes at import, near-duplicate
groups, leaks across a split's train and val/test, and the other dataset checks (class imbalance,
tiny/huge images, extreme aspect ratios, degenerate boxes), through the real API (the in-process
app: Ray is not the point here; imports run in their real worker process)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from pydantic import ValidationError
from sqlalchemy import update

from fastapi.testclient import TestClient

from appliance.config import Settings
from appliance.main import create_app
from appliance.services import health
from appliance.store.db import get_engine, head_revision, migrate, session_scope
from appliance.store.legacy_migrations import MIGRATIONS, _add_image_phash, upgrade as legacy_upgrade
from appliance.store.tables import Image as ImageRow
from tests.fixtures import class_image, create_project, import_and_wait, list_all_images, save_image
from tests.htmlq import parse
from tests.workflows import wait_for


def scene(seed: int, size: int = 96) -> Image.Image:
    """A structured picture (shapes on a gradient): perceptual hashes of two seeds are far apart."""
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.randrange(size), rng.randrange(size)
        r = rng.randrange(8, size // 3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
    return im


def noisy(colour, seed: int, size: int = 48) -> Image.Image:
    return class_image(colour, size, random.Random(seed), noise=0.35)


@pytest.fixture
def root(settings) -> Path:
    return settings.allowed_import_roots[0]


@pytest.fixture
def leaky(client, root) -> dict:
    """A classification dataset: 6 unrelated `red` and 6 `blue` pictures, plus one picture twice —
    `red/scene.jpg` and `blue/scene_resized.png` (resized by 10 % and re-encoded). Returns ids."""
    src = root / "leaky"
    for i in range(6):
        save_image(noisy((200, 30, 30), i), src / "red" / f"r{i}.jpg")
        save_image(noisy((30, 30, 200), 100 + i), src / "blue" / f"b{i}.jpg")
    picture = scene(7, 128)
    save_image(picture, src / "red" / "scene.jpg", quality=90)
    save_image(picture.resize((115, 115), Image.Resampling.LANCZOS), src / "blue" / "scene_resized.png")
    pid = create_project(client)
    job = import_and_wait(client, pid, src, "folder")
    assert job["status"] == "completed" and job["added"] == 14, job
    by_name = {im["original_name"]: im["id"] for im in list_all_images(client, pid)}
    return {"pid": pid, "a": by_name["red/scene.jpg"], "b": by_name["blue/scene_resized.png"], "ids": by_name}


def _split(client, pid: str, seed: int, ratios=(0.5, 0.25, 0.25), stratified=False) -> str:
    r = client.post(f"/api/splits/{pid}", json={"name": f"seed {seed}", "train": ratios[0], "val": ratios[1],
                                                "test": ratios[2], "seed": seed, "stratified": stratified})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def _subsets(client, pid: str, sid: str) -> dict[str, str]:
    return {im["id"]: sub for sub in ("train", "val", "test")
            for im in list_all_images(client, pid, split_id=sid, subset=sub)}


def _split_where(client, pid: str, a: str, b: str, want) -> tuple[str, dict]:
    """The first seed whose split puts `a` and `b` where `want(subset_a, subset_b)` says."""
    for seed in range(40):
        sid = _split(client, pid, seed)
        subsets = _subsets(client, pid, sid)
        if want(subsets[a], subsets[b]):
            return sid, subsets
        assert client.delete(f"/api/splits/{pid}/{sid}").status_code == 200
    raise AssertionError("no seed in 40 gave the placement wanted")


# ----------------------------------------------------------------------------- leaks


def test_near_duplicate_pair_across_train_and_test_is_a_leak_and_within_one_subset_is_not(client, leaky):
    pid, a, b = leaky["pid"], leaky["a"], leaky["b"]
    sid, subsets = _split_where(client, pid, a, b, lambda x, y: {x, y} in ({"train", "test"}, {"train", "val"}))
    r = client.get(f"/api/splits/{pid}/{sid}/leaks")
    assert r.status_code == 200, r.text
    leaks = r.json()["data"]
    held_out = subsets[b] if subsets[a] == "train" else subsets[a]
    assert leaks["count"] == 1 and leaks["by_subset"][held_out] == 1 and not leaks["truncated"], leaks
    [pair] = leaks["pairs"]
    assert {pair["train_image"]["id"], pair["held_out_image"]["id"]} == {a, b}
    assert pair["subset"] == held_out and 0 <= pair["distance"] <= 6
    assert pair["train_image"]["thumbnail_url"].startswith(f"/api/datasets/{pid}/thumbnail/")
    # The Split page loads the leak report of each split, which warns with both thumbnails.
    page = parse(client.get(f"/projects/{pid}/split").text)
    assert page.select_one(f'[hx-get="/api/splits/{pid}/{sid}/leaks"]')
    fragment = parse(client.get(f"/api/splits/{pid}/{sid}/leaks", headers={"HX-Request": "true"}).text)
    warning = fragment.select_one(".leak-warning").text
    assert "1 near-duplicate pair" in warning and "look better than" in warning
    assert len(fragment.select(".leak-pair img")) == 2
    # A split that keeps the pair inside one subset has no leak.
    assert client.delete(f"/api/splits/{pid}/{sid}").status_code == 200
    sid, _ = _split_where(client, pid, a, b, lambda x, y: x == y)
    leaks = client.get(f"/api/splits/{pid}/{sid}/leaks").json()["data"]
    assert leaks["count"] == 0 and leaks["pairs"] == []
    fragment = parse(client.get(f"/api/splits/{pid}/{sid}/leaks", headers={"HX-Request": "true"}).text)
    assert fragment.select_one(".leak-none") and not fragment.select(".leak-warning")


# ----------------------------------------------------------------------------- grouping


def test_exact_and_near_groups_and_unrelated_pictures(client, root):
    """Identical pixels in two files (PNG at two compression levels: different bytes, same hash) form
    an exact group even at distance 0; a brightened re-encode (4 bits away) joins only within the
    threshold; the 8 unrelated pictures, and a different scene, join nothing."""
    src = root / "groups"
    exact, near = scene(1), scene(2, 128)
    (src / "x").mkdir(parents=True)
    exact.save(src / "x" / "exact_a.png", compress_level=1)
    exact.save(src / "x" / "exact_b.png", compress_level=9)
    save_image(near, src / "x" / "near_a.jpg", quality=92)
    save_image(ImageEnhance.Brightness(near).enhance(1.3), src / "x" / "near_b.jpg", quality=70)
    save_image(scene(3), src / "x" / "other_scene.png")
    for i in range(8):
        save_image(noisy((40, 160, 40), 200 + i), src / "x" / f"noise{i}.jpg")
    pid = create_project(client)
    assert import_and_wait(client, pid, src, "folder")["added"] == 13

    def groups(**params) -> list[set[str]]:
        r = client.get(f"/api/datasets/{pid}/near-duplicates", params=params)
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        assert page["total"] == len(page["items"])
        return [({im["original_name"].split("/")[-1] for im in g["images"]}, g["exact"]) for g in page["items"]]

    at_zero = groups(distance=0)
    assert at_zero == [({"exact_a.png", "exact_b.png"}, True)], at_zero
    assert groups(distance=3) == at_zero
    default = groups()
    assert sorted(default, key=lambda g: sorted(g[0])) == [
        ({"exact_a.png", "exact_b.png"}, True), ({"near_a.jpg", "near_b.jpg"}, False)], default
    summary = client.get(f"/api/datasets/{pid}").json()["data"]
    assert summary["near_duplicate_groups"] == 2
    assert summary["health"]["near_duplicate_images"] == 4 and summary["health"]["unhashed_images"] == 0
    flagged = {im["original_name"].split("/")[-1] for im in list_all_images(client, pid, issue="near_duplicate")}
    assert flagged == {"exact_a.png", "exact_b.png", "near_a.jpg", "near_b.jpg"}
    # The page lists the groups with their thumbnails, and the dataset page links to it.
    page = parse(client.get(f"/projects/{pid}/dataset/near-duplicates").text)
    assert len(page.select(".near-group")) == 2 and len(page.select(".near-group img")) == 4
    dataset = parse(client.get(f"/projects/{pid}/dataset").text)
    assert dataset.select_one("#near-duplicates-link").attrs["href"] == f"/projects/{pid}/dataset/near-duplicates"


def test_hashes_missing_before_the_upgrade_are_backfilled_at_start(client, settings, leaky):
    """Images of a database from before hashing (phash null) are left out of the checks (and counted),
    until the next start-up hashes them in the background."""
    pid = leaky["pid"]
    with session_scope(settings.db_url) as s:
        s.execute(update(ImageRow).where(ImageRow.project_id == pid).values(phash=None))
    summary = client.get(f"/api/datasets/{pid}").json()["data"]
    assert summary["near_duplicate_groups"] == 0 and summary["health"]["unhashed_images"] == 14
    with TestClient(create_app(settings)) as restarted:
        summary = wait_for(lambda: restarted.get(f"/api/datasets/{pid}").json()["data"],
                           lambda d: d["health"]["unhashed_images"] == 0, timeout=60)
    assert summary["near_duplicate_groups"] == 1


def test_migration_adds_the_hash_column_to_an_older_database(tmp_path):
    """A database at the version before this change gets `images.phash` (null) and keeps its rows."""
    engine = get_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:  # the database as a release before the column left it
        legacy_upgrade(conn)
        conn.exec_driver_sql("ALTER TABLE images DROP COLUMN phash")
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version >= ?", (MIGRATIONS.index(_add_image_phash) + 1,))
        conn.exec_driver_sql("INSERT INTO projects (id, name, task, description, created_at, updated_at) "
                             "VALUES ('proj-1', 'p', 'classification', '', '2026-01-01', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO images (id, project_id, filename, original_name, sha256, width, height, "
                             "size_bytes, created_at) VALUES ('img-1', 'proj-1', 'a.jpg', 'a.jpg', 'x', 4, 4, 1, '2026-01-01')")
    assert migrate(engine) == head_revision()
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT id, phash FROM images").all() == [("img-1", None)]


def test_neighbour_search_matches_brute_force():
    """Multi-index hashing finds exactly the pairs an all-pairs comparison finds, at every distance."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, 400, dtype=np.uint64) << np.uint64(1) | rng.integers(0, 2, 400, dtype=np.uint64)
    planted = [h ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, rng.integers(1, 12), replace=False)))
               for h in base[:150]]
    hashes = np.unique(np.concatenate([base, np.array(planted, dtype=np.uint64)]))
    bits = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    for distance in range(health.MAX_DISTANCE + 1):
        i, j, d = health.near_pairs(hashes, distance)
        want_i, want_j = np.nonzero(np.triu((bits <= distance) & (bits > 0), 1))
        assert set(zip(i.tolist(), j.tolist())) == set(zip(want_i.tolist(), want_j.tolist())), distance
        assert (d == bits[i, j]).all()
    assert len(health.near_pairs(hashes[:1], 6)[0]) == 0


# ----------------------------------------------------------------------------- the other checks


def test_summary_fields_and_filters(client, root):
    src = root / "sizes"
    for i in range(6):
        save_image(noisy((220, 220, 30), 300 + i), src / "big" / f"y{i}.jpg")
    save_image(noisy((30, 220, 220), 400, size=20), src / "small" / "tiny.png")
    save_image(noisy((30, 220, 220), 401).resize((5004, 40)), src / "small" / "huge_and_wide.png")
    save_image(noisy((30, 220, 220), 402).resize((300, 60)), src / "big" / "wide.jpg")
    pid = create_project(client)
    assert import_and_wait(client, pid, src, "folder")["added"] == 9
    summary = client.get(f"/api/datasets/{pid}").json()["data"]
    h = summary["health"]
    assert h["class_imbalance"]["ratio"] == math.floor(7 / 2 * 100) / 100
    assert (h["class_imbalance"]["largest"], h["class_imbalance"]["smallest"]) == ("big", "small")
    assert "small" in h["class_imbalance"]["advice"]
    assert (h["tiny_images"], h["huge_images"], h["extreme_aspect_images"]) == (1, 1, 2)
    assert h["degenerate_boxes"] == 0 and h["near_duplicate_distance"] == 6
    assert h["limits"] == {"tiny_side": 32, "huge_side": 5000, "extreme_aspect": 4.0}

    def names(issue: str) -> set[str]:
        return {im["original_name"] for im in list_all_images(client, pid, issue=issue)}

    assert names("tiny") == {"small/tiny.png"}
    assert names("huge") == {"small/huge_and_wide.png"}
    assert names("extreme_aspect") == {"small/huge_and_wide.png", "big/wide.jpg"}
    assert names("degenerate_boxes") == set()
    html = parse(client.get(f"/api/datasets/{pid}", headers={"HX-Request": "true"}).text)
    assert html.select_one("#health-tiny").text == "1" and "imbalanced" in html.select_one("#health-imbalance").text.lower()


def test_degenerate_boxes_counted(client, root):
    """Imports drop zero-area boxes and clip overhanging ones; a sub-pixel sliver is kept and counted."""
    src = root / "boxes"
    lines = ["filename,xmin,ymin,xmax,ymax,label"]
    for i in range(3):
        save_image(scene(20 + i, 64), src / f"b{i}.png")
        lines.append(f"b{i}.png,4,4,30,30,cat")
    lines += ["b0.png,10,10,10.4,40,cat", "b1.png,10,10,40,10.5,dog", "b1.png,5,5,4,9,dog"]  # 2 slivers, 1 dropped
    (src / "annotations.csv").write_text("\n".join(lines) + "\n")
    pid = create_project(client, task="detection")
    job = import_and_wait(client, pid, src, "csv")
    assert job["status"] == "completed" and "zero-area" in str(job["warnings"]), job
    h = client.get(f"/api/datasets/{pid}").json()["data"]["health"]
    assert (h["degenerate_boxes"], h["degenerate_box_images"]) == (2, 2)
    assert {im["original_name"] for im in list_all_images(client, pid, issue="degenerate_boxes")} == {"b0.png", "b1.png"}


# ----------------------------------------------------------------------------- hostile values


def test_bad_values(client, leaky, settings):
    pid = leaky["pid"]
    sid = _split(client, pid, 0)
    for value in ("-1", "11", "999999999999999999999", "six", "1.5", ""):
        for url in (f"/api/datasets/{pid}/near-duplicates", f"/api/splits/{pid}/{sid}/leaks"):
            r = client.get(url, params={"distance": value})
            assert r.status_code == 422, (url, value, r.text)
            assert r.json()["error"]["code"] == "VALIDATION_ERROR" and "distance" in r.json()["error"]["message"]
    r = client.get(f"/api/datasets/{pid}/images", params={"issue": "blurry"})
    assert r.status_code == 422 and "issue" in r.json()["error"]["message"]
    r = client.get(f"/api/splits/{pid}/split-doesnotexist0000000000000/leaks")
    assert r.status_code in (404, 422), r.text
    r = client.get("/api/datasets/proj-00000000000000000000000000/near-duplicates")
    assert r.status_code in (404, 422), r.text
    other = create_project(client)
    assert client.get(f"/api/splits/{other}/{sid}/leaks").status_code == 404  # another project's split
    for bad in (-1, 11, 64):
        with pytest.raises(ValidationError, match="near_duplicate_distance"):
            Settings(workspace=settings.workspace, near_duplicate_distance=bad)
    with pytest.raises(Exception, match="distance"):
        health.check_distance(11)
    r = client.get(f"/projects/{pid}/dataset/near-duplicates", params={"distance": "11"})
    assert r.status_code == 422
