"""Export through the real server: ONNX and TorchScript of a trained classifier, verified with
onnxruntime; the bundle's predict.py run in a subprocess; the queue; refusals.

Detection exports (ONNX and TorchScript bundles compared box by box with the appliance's own
prediction, not through the export's parity report) are in test_detection_e2e.py, which shares
one trained detector across the detection tests."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import pytest

from tests.workflows import create_experiment, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def classifier(trained_classifier):
    pid, _, eid = trained_classifier
    return pid, eid


def request(server, pid, eid, **body):
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, **body})
    assert r.status_code == 202, r.text
    return r.json()["data"]["id"]


def wait_export(server, pid, export_id):
    return wait_for(lambda: server.http.get(f"/api/export/{pid}/{export_id}").json()["data"],
                    lambda e: e["status"] in ("completed", "failed"), timeout=600, every=0.5)


def test_two_exports_queue_and_both_complete_one_after_the_other(server, classifier, tmp_path):
    pid, eid = classifier
    onnx_id = request(server, pid, eid, format="onnx")
    ts_id = request(server, pid, eid, format="torchscript")
    onnx, ts = wait_export(server, pid, onnx_id), wait_export(server, pid, ts_id)
    assert onnx["status"] == "completed" and ts["status"] == "completed", (onnx["error"], ts["error"])
    assert onnx["finished_at"] <= ts["finished_at"]
    for e in (onnx, ts):
        assert e["parity"]["passed"] and e["parity"]["max_abs_diff"] < 1e-4
        assert e["size_bytes"] > 0 and e["latency"]["batch_1"]["exported"]["p50_ms"] > 0
        assert e["metric"]["name"] == "accuracy" and abs(e["metric"]["delta"]) < 1e-6
    assert onnx["info"]["export"]["dynamic_batch"] and onnx["info"]["export"]["opset"] >= 13

    r = server.http.get(onnx["download_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    bundle = zipfile.ZipFile(io.BytesIO(r.content))
    names = set(bundle.namelist())
    assert {"model.onnx", "labels.json", "preprocess.json", "predict.py", "README.md"} <= names
    assert json.loads(bundle.read("labels.json")) == ["blue", "red"]
    bundle.extractall(tmp_path / "bundle")

    image = server.http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
    (tmp_path / "img.jpg").write_bytes(server.http.get(image["url"]).content)
    run = subprocess.run([sys.executable, "predict.py", str(tmp_path / "img.jpg")], cwd=tmp_path / "bundle",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout.strip().splitlines()[-1])
    ours = server.http.post(f"/api/evaluation/{pid}/predict", data={"experiment_id": eid, "image_id": image["id"]}).json()["data"]
    # the bundle agrees with the appliance's own prediction, class by class (not only its argmax)
    assert printed["label"] == ours["class_name"] == image["label"]
    assert {t["label"]: t["score"] for t in printed["top"]} == pytest.approx(dict(zip(ours["classes"], ours["probs"])), abs=1e-4)


def test_bad_export_requests(server, classifier):
    pid, eid = classifier
    before = len(server.http.get(f"/api/export/{pid}").json()["data"])
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "tensorrt"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE" and "TensorRT" in r.json()["error"]["message"]
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "tflite"})
    assert r.status_code == 422 and "format" in r.json()["error"]["message"]
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "precision": "fp16"})
    assert r.status_code == 422 and "fp16" in r.json()["error"]["message"]
    sid = server.http.get(f"/api/training/{pid}/experiments/{eid}").json()["data"]["split_id"]
    never = create_experiment(server.http, pid, sid, name="never")
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": never})
    assert r.status_code == 422 and "train it first" in r.json()["error"]["message"]
    other = server.http.post("/api/projects", json={"name": "other", "task": "classification"}).json()["data"]["id"]
    r = server.http.post("/api/export/run", json={"project_id": other, "experiment_id": eid})
    assert r.status_code == 404
    assert len(server.http.get(f"/api/export/{pid}").json()["data"]) == before  # refusals queue nothing
    assert server.http.get(f"/api/export/{pid}/export-000000000000/download").status_code == 404
