"""Issue 13, item 6 (loose end): the Split page's "Suggested: keep the dataset's own split" card shows
only until a split "as imported" exists; then a one-line note names that split instead."""

from __future__ import annotations

from tests.fixtures import create_project, import_and_wait, make_classification_folder
from tests.htmlq import parse


def test_the_suggestion_gives_way_to_a_note_once_the_split_as_imported_exists(client, settings):
    pid = create_project(client)
    gen = make_classification_folder(settings.allowed_import_roots[0] / "own", per_class=4, size=16, nested=True)
    assert import_and_wait(client, pid, gen.root)["added"] == 8
    page = parse(client.get(f"/projects/{pid}/split").text)
    assert page.select("#as-imported-card") and not page.select("#as-imported-note")
    # A split by ratios keeps the suggestion: the imported subsets are not kept yet.
    r = client.post(f"/api/splits/{pid}", json={"name": "ratios", "train": 0.5, "val": 0.25, "test": 0.25})
    assert r.status_code == 201, r.text
    assert parse(client.get(f"/projects/{pid}/split").text).select("#as-imported-card")

    r = client.post(f"/api/splits/{pid}", json={"name": "Own subsets", "from_source": True})
    assert r.status_code == 201, r.text
    sid = r.json()["data"]["id"]
    page = parse(client.get(f"/projects/{pid}/split").text)
    assert not page.select("#as-imported-card") and not page.select("#create-split-source")
    note = page.select_one("#as-imported-note")
    assert "Own subsets" in note.text
    assert note.select_one("a").attrs["href"] == f"#split-{sid}"
    assert page.select_one(f"#split-{sid}") is not None  # the anchor it links to
    assert page.select_one("#split-form-card h2").text.strip() == "New split"

    # Deleted again: the suggestion comes back.
    assert client.delete(f"/api/splits/{pid}/{sid}").status_code in (200, 204)
    page = parse(client.get(f"/projects/{pid}/split").text)
    assert page.select("#as-imported-card") and not page.select("#as-imported-note")
