"""Issue #13, item 3, through real Ray, the Serve ingress and a real browser: a model that answers
one class for every image is flagged "No better than always answering '<class>' (NN.N%)" in the
API and on the evaluation and training pages; a trained model is flagged exactly when it gets no
more images right than the majority class.

The one-class model is the session's shared trained classifier (`trained_classifier`) with its
last layer replaced: weights 0 and a bias that picks one class, so its answer is that class
whatever the image — a chance-level model on purpose, without training one. It is saved as the
checkpoint of a new experiment (same model, size and classes) in a project of its own, and
evaluated on Ray like any other. Every expected number is counted from the images API."""

from __future__ import annotations

from collections import Counter

import pytest
from playwright.sync_api import expect

from appliance.store import runs
from appliance.store.paths import Workspace
from tests.workflows import create_experiment, project_with_split, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.ray]
SHOTS = "/work/shots"


def evaluate(http, pid: str, eid: str, subset: str = "test") -> dict:
    r = http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": subset,
                                               "checkpoint": "best"})
    assert r.status_code == 202, r.text
    evid = r.json()["data"]["id"]
    ev = wait_for(lambda: http.get(f"/api/evaluation/{pid}/{evid}").json()["data"],
                  lambda e: e["status"] in ("completed", "failed"), timeout=180, every=0.5)
    assert ev["status"] == "completed", ev
    return ev


def subset_labels(http, pid: str, sid: str, subset: str) -> Counter:
    from tests.fixtures import list_all_images

    return Counter(im["label"] for im in list_all_images(http, pid, split_id=sid, subset=subset))


def expected_baseline(counts: Counter, class_names: list[str]) -> dict:
    name = max(class_names, key=lambda c: (counts[c], -class_names.index(c)))
    total = sum(counts.values())
    return {"class_name": name, "count": counts[name], "total": total, "share": counts[name] / total}


@pytest.fixture(scope="module")
def one_class(server, trained_classifier):
    """(pid, sid, eid, evaluation, answer) of an experiment whose checkpoint answers `answer` always."""
    import torch

    http = server.http
    shared_pid, _, shared_eid = trained_classifier
    shared = http.get(f"/api/training/{shared_pid}/experiments/{shared_eid}").json()["data"]
    pid, sid = project_with_split(http, server.import_root, per_class=10)
    eid = create_experiment(http, pid, sid, epochs=shared["params"]["epochs"], name="always-one-class")
    exp = http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
    assert exp["class_names"] == shared["class_names"]
    answer = exp["class_names"][-1]

    workspace = Workspace(server.settings.workspace)
    ckpt = torch.load(workspace.experiment_dir(shared_pid, shared_eid) / "weights" / "best.ckpt",
                      map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    state["model.fc.weight"] = torch.zeros_like(state["model.fc.weight"])
    state["model.fc.bias"] = torch.full_like(state["model.fc.bias"], -5.0)
    state["model.fc.bias"][exp["class_names"].index(answer)] = 5.0
    target = workspace.experiment_dir(pid, eid) / "weights" / "best.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, target)
    return pid, sid, eid, evaluate(http, pid, eid), answer


def test_one_class_model_is_flagged_in_the_api(server, one_class):
    http = server.http
    pid, sid, eid, ev, answer = one_class
    test = subset_labels(http, pid, sid, "test")
    class_names = http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]["class_names"]
    baseline = expected_baseline(test, class_names)
    assert ev["metrics"]["accuracy"] == test[answer] / sum(test.values())  # it really answers one class
    assert ev["majority_baseline"] == baseline
    assert ev["beats_baseline"] is False
    assert ev["baseline_warning"] == f"No better than always answering '{baseline['class_name']}' ({baseline['share']:.1%})"
    listed = {e["id"]: e for e in http.get(f"/api/evaluation/{pid}").json()["data"]}[ev["id"]]
    assert listed["beats_baseline"] is False and listed["baseline_warning"] == ev["baseline_warning"]


def test_the_shared_classifier_is_judged_by_the_rule(server, trained_classifier):
    """The session's trained classifier usually beats the majority class, but not always (see
    `trained_classifier`: a few CPU epochs sometimes end at one class): whichever it did, the fields
    must say so — flagged exactly when it gets no more test images right than the majority class."""
    pid, sid, eid = trained_classifier
    ev = evaluate(server.http, pid, eid)
    class_names = server.http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]["class_names"]
    baseline = expected_baseline(subset_labels(server.http, pid, sid, "test"), class_names)
    assert ev["majority_baseline"] == baseline
    correct = round(ev["metrics"]["accuracy"] * baseline["total"])
    assert ev["beats_baseline"] is (correct > baseline["count"])
    assert (ev["baseline_warning"] is None) is ev["beats_baseline"]


def test_pages_show_the_baseline_and_the_flag(page, server, one_class):
    import os

    http = server.http
    pid, sid, eid, ev, answer = one_class
    os.makedirs(SHOTS, exist_ok=True)

    # Evaluation page: the list row and the opened evaluation carry the flag.
    page.goto(f"/projects/{pid}/evaluation")
    row = page.locator(f"#evaluations-table tr.eval-row[data-evaluation-id='{ev['id']}']")
    expect(row.locator(".baseline-flag")).to_have_text(f"⚠ {ev['baseline_warning']}")
    row.locator("button.view").click()
    expect(page.locator("#baseline-tile")).to_contain_text(f"{100 * ev['majority_baseline']['share']:.1f}%")
    expect(page.locator("#baseline-tile")).to_contain_text(ev["majority_baseline"]["class_name"])
    expect(page.locator("#baseline-flag")).to_have_text(f"⚠ {ev['baseline_warning']}")
    page.screenshot(path=f"{SHOTS}/detclasses-evaluation.png", full_page=True)

    # Training page: the val accuracy a one-class model scores on the val subset, recorded as the
    # Train worker's callback records an epoch; the row and the live panel flag it, the val chart
    # draws the baseline.
    val = subset_labels(http, pid, sid, "val")
    share = val[answer] / sum(val.values())
    runs.record_epoch(server.settings.db_url, eid, {
        "epoch": 1, "epochs": 1, "train_loss": 1.1, "val_loss": 1.1, "val_metric": share, "lr": 1e-3,
        "seconds": 1.0, "images_per_s": 10.0})
    exp = http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]
    assert exp["beats_baseline"] is False, exp
    page.goto(f"/projects/{pid}/training#{eid}")
    exp_row = page.locator(f"#experiments-table tr.exp-row[data-experiment-id='{eid}']")
    expect(exp_row.locator(".baseline-flag")).to_have_text(f"⚠ {exp['baseline_warning']}")
    expect(page.locator("#live-baseline-flag")).to_be_visible()
    expect(page.locator("#live-baseline-flag")).to_contain_text(exp["baseline_warning"])
    assert page.evaluate("trainingPage.charts.metric.$baseline") == exp["majority_baseline"]
    page.screenshot(path=f"{SHOTS}/detclasses-training.png", full_page=True)
