"""A person opens an evaluation in a real browser: headline metrics, the confusion heatmap whose
cells open their images, the sortable per-class table, a side-by-side comparison and "try one image".

The project, a 1-epoch experiment and two evaluations are set up through the HTTP API (real Ray,
CPU); only the evaluation page is driven through the UI.
"""

from __future__ import annotations

import re

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.workflows import create_experiment, project_with_split, wait_experiment, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.ray]


@pytest.fixture(scope="module")
def evaluated(server):
    """A trained classification experiment (red / blue) with a test and a val evaluation, both completed."""
    http = server.http
    pid, sid = project_with_split(http, server.import_root, task="classification", per_class=8)
    eid = create_experiment(http, pid, sid, epochs=1, name="eval-page")
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(http, pid, eid)["status"] == "completed"
    ids = []
    for subset, checkpoint in (("test", "best"), ("val", "last")):
        r = http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": subset,
                                                   "checkpoint": checkpoint})
        assert r.status_code == 202, r.text
        ids.append(r.json()["data"]["id"])
    evaluations = [
        wait_for(lambda evid=evid: http.get(f"/api/evaluation/{pid}/{evid}").json()["data"],
                 lambda e: e["status"] in ("completed", "failed"), timeout=180, every=0.5)
        for evid in ids
    ]
    for ev in evaluations:
        assert ev["status"] == "completed", ev
    return {"pid": pid, "eid": eid, "test": evaluations[0], "val": evaluations[1]}


def test_open_an_evaluation_and_try_one_image(page, server, evaluated, tmp_path):
    pid, ev = evaluated["pid"], evaluated["test"]
    metrics = ev["metrics"]
    page_errors = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(f"/projects/{pid}/evaluation")
    expect(page.locator(".tabs a.active")).to_have_text("Evaluation")
    expect(page.locator("#run-experiment option")).to_have_count(1)  # the trained experiment only
    row = page.locator(f"#evaluations-table tr.eval-row[data-evaluation-id='{ev['id']}']")
    expect(row.locator(".eval-status")).to_have_text("completed")
    expect(row.locator(".headline")).to_contain_text(f"{metrics['accuracy']:.3f}")

    # Open it: headline metrics and a 2 × 2 confusion heatmap.
    row.locator("button.view").click()
    detail = page.locator("#detail-card")
    expect(detail).to_be_visible()
    expect(page.locator("#headline .tile").first).to_contain_text("Accuracy")
    expect(page.locator("#headline")).to_contain_text(f"{100 * metrics['accuracy']:.1f}%")
    heat = page.locator("#confusion-table")
    expect(heat).to_be_visible()
    expect(heat.locator("td.cell")).to_have_count(4)
    matrix = metrics["confusion_matrix"]["matrix"]
    labels = metrics["confusion_matrix"]["labels"]
    for t in range(2):
        for p in range(2):
            expect(heat.locator(f"td.cell[data-t='{t}'][data-p='{p}'] .count")).to_have_text(str(matrix[t][p]))

    # A cell links to its images (kind=all): the gallery shows exactly that cell's thumbnails.
    t, p = max(((t, p) for t in range(2) for p in range(2)), key=lambda c: matrix[c[0]][c[1]])
    count = matrix[t][p]
    if count:
        heat.locator(f"td.cell[data-t='{t}'][data-p='{p}'] button").click()
        expect(page.locator(f"#gallery .gallery-meta[data-cell='{t},{p}'][data-kind='all']")).to_have_count(1)
        samples = page.locator("#gallery .sample")
        expect(samples).to_have_count(min(count, 24))
        expect(page.locator("#cell-chip")).to_contain_text(f"truth {labels[t]} → predicted {labels[p]}")
        for i in range(samples.count()):
            expect(samples.nth(i).locator(".truth")).to_have_text(labels[t])
            expect(samples.nth(i).locator(".pred")).to_have_text(labels[p])
        page.wait_for_function(
            "() => [...document.querySelectorAll('#gallery .sample img')].every(i => i.complete && i.naturalWidth > 0)")

    # The per-class table sorts by any column.
    names = page.locator("#per-class tbody td.cls-name")
    page.click("#per-class th[data-key='name']")
    expect(names).to_have_text(sorted(labels))
    page.click("#per-class th[data-key='name']")
    expect(names).to_have_text(sorted(labels, reverse=True))
    expect(page.locator("#per-class th[data-key='name']")).to_have_attribute("aria-sort", "descending")
    page.click("#per-class th[data-key='f1']")
    by_f1 = sorted(metrics["per_class"], key=lambda c: (-c["f1"], c["index"]))
    expect(names).to_have_text([c["name"] for c in by_f1])

    # Compare the test and val evaluations side by side.
    val_row = page.locator(f"#evaluations-table tr.eval-row[data-evaluation-id='{evaluated['val']['id']}']")
    row.locator(".compare-check").check()
    val_row.locator(".compare-check").check()
    compare = page.locator("#compare-table")
    expect(compare).to_be_visible()
    def compare_row(name):
        return compare.locator("tbody tr").filter(has=page.locator("td:first-child").get_by_text(name, exact=True))

    accuracy = compare_row("Accuracy").locator("td")
    expect(accuracy.nth(1)).to_have_text(f"{metrics['accuracy']:.3f}")
    expect(accuracy.nth(2)).to_have_text(f"{evaluated['val']['metrics']['accuracy']:.3f}")
    expect(accuracy.nth(3)).to_have_class(re.compile(r"\bdelta\b"))
    for name in labels:
        expect(compare_row(name)).to_have_count(1)

    # Try one image: upload a red 32 × 32 PNG and see a predicted class.
    png = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 20, 20)).save(png)
    page.locator("#try-file").set_input_files(str(png))
    page.click("#try-submit")
    predicted = page.locator("#try-class")
    expect(predicted).to_be_visible(timeout=60_000)
    assert predicted.inner_text().strip() in labels
    expect(page.locator("#try-bars .bar-row")).to_have_count(2)
    expect(page.locator("#try-badge")).to_contain_text(predicted.inner_text().strip())
    page.wait_for_function("() => { const i = document.querySelector('#try-image'); return i.complete && i.naturalWidth === 32; }")
    expect(page.locator("#try-error")).to_have_text("")
    screenshot(page, "evaluation")
    assert page_errors == []
