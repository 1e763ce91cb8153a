"""Issue #13, item 11, in a real browser on a real Ray Train run: progress inside an epoch
(batches done / total and an ETA, from the run's throttled `progress` events over the SSE stream),
Stop saying it waits for the end of the epoch, and the run's duration counting on across a resume.

The run is held mid-epoch by the training gates (tests/ray_jobs/gates.py): the Train worker passes
gate `batch:<n>` right after the first batch of epoch n and its progress event, and waits there
while the test keeps it closed — so "mid-epoch" is an exact point, not a race with a slow epoch.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.ray_jobs.gates import Gates
from tests.workflows import create_experiment, experiment, project_with_split, wait_experiment

pytestmark = [pytest.mark.browser, pytest.mark.ray]

RUN_TIMEOUT_MS = 240_000  # Ray Train start-up alone takes 20-40 s on a small CPU host
SECONDS = re.compile(r"^(?:(\d+)h (\d+)m|(\d+)m (\d+)s|(\d+)s)$")


def seconds(text: str) -> int:
    m = SECONDS.match(text.strip())
    assert m, f"not a duration: {text!r}"
    h, hm, m_, ms, s = m.groups()
    if h is not None:
        return int(h) * 3600 + int(hm) * 60
    if m_ is not None:
        return int(m_) * 60 + int(ms)
    return int(s)


def test_progress_inside_an_epoch_stop_and_duration_across_resume(page, server):
    http = server.http
    pid, sid = project_with_split(http, server.import_root, per_class=10)
    train = http.get(f"/api/splits/{pid}/{sid}").json()["data"]["counts"]["total"]["train"]
    batches = train // 2  # batches of 2; a last batch of one image is dropped (BatchNorm needs two)
    eid = create_experiment(http, pid, sid, name="held mid-epoch", epochs=2, batch_size=2, augmentations=[])
    gates = Gates(eid).close("batch:1")
    page.goto(f"/projects/{pid}/training#{eid}")
    row = page.locator(f'#experiments-table tr.exp-row[data-experiment-id="{eid}"]')
    row.locator("button.start").click()
    try:
        gates.wait_arrival("batch:1")  # the worker has done batch 1 of epoch 1 and published it
        # Batches done / total of the epoch being trained, a bar, and an ETA before any epoch ended.
        expect(page.locator("#live-batch")).to_have_text(re.compile(r"^1 / (\d+)$"), timeout=30_000)
        total = int(page.locator("#live-batch").inner_text().split("/")[1])
        assert total == batches
        expect(page.locator("#live-progress")).to_be_visible()
        expect(page.locator("#live-epoch")).to_have_text("0 / 2")
        expect(page.locator("#live-eta")).to_have_text(SECONDS)
        page.screenshot(path="/work/shots/edges-b-training-progress.png", full_page=True)

        # Stop while the epoch trains: the page says the run ends when this epoch does.
        row.locator("button.stop").click()
        expect(page.locator("#live-stop-note")).to_contain_text("stops at the end of the current epoch (epoch 1 of 2)")
        expect(page.locator("#live-status")).to_have_text("stopping after this epoch…")
        assert row.locator("button.stop").get_attribute("title").startswith("Training stops at the end of the current epoch")
    finally:
        gates.open()
    stopped = wait_experiment(http, pid, eid)
    assert stopped["status"] == "stopped" and stopped["epochs_done"] == 1, stopped
    expect(row.locator(".exp-status")).to_have_text("stopped", timeout=30_000)
    before = seconds(row.locator("td.num").nth(2).inner_text())
    assert before >= 1 and stopped["duration_s"] >= before

    # Resume, held at the first batch of epoch 2: the live counter goes on from the first attempt.
    gates.close("batch:2")
    row.locator("button.resume").click()
    try:
        gates.wait_arrival("batch:2")
        expect(row.locator(".duration")).to_have_count(1, timeout=30_000)
        expect(page.locator("#live-batch")).to_have_text(f"1 / {batches}")
        running = experiment(http, pid, eid)
        assert running["status"] == "running" and running["run_seconds"] >= before
        shown = seconds(row.locator(".duration").inner_text())
        assert shown >= before, (shown, before)
        # This attempt's own time so far is part of it too (the page counts from the first attempt).
        assert shown >= running["duration_s"] - 2, (shown, running)
    finally:
        gates.open()
    done = wait_experiment(http, pid, eid)
    assert done["status"] == "completed" and done["epochs_done"] == 2, done
    expect(row.locator(".exp-status")).to_have_text("completed", timeout=30_000)
    after = seconds(row.locator("td.num").nth(2).inner_text())
    assert after >= before, (after, before)
    assert done["duration_s"] >= stopped["duration_s"]
    expect(page.locator("#live-progress")).to_be_hidden()
    screenshot(page, "edges-b-training-after-resume")
    page.screenshot(path="/work/shots/edges-b-training-1280.png", full_page=True)

    # The experiments table does not push a 400 px page sideways.
    page.set_viewport_size({"width": 400, "height": 800})
    page.reload()
    expect(row).to_be_visible()
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], widths
    page.screenshot(path="/work/shots/edges-b-training-400.png", full_page=True)
