"""Issue #16: a completed export becomes a live prediction endpoint on Ray Serve — through the real Serve
ingress and proxy. The endpoint must agree with the bundle's own predict.py (run as a subprocess) to 1e-5,
refuse a missing key (401) and a non-image (400), run beside another endpoint and the UI ingress, answer
404 once undeployed, and return detection boxes in the original image's pixels."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures import create_project, make_detection_coco
from tests.workflows import create_experiment, import_folder, wait_experiment, wait_for

pytestmark = pytest.mark.ray


def export_of(server, pid, eid, fmt="onnx"):
    r = server.http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": fmt})
    assert r.status_code == 202, r.text
    xid = r.json()["data"]["id"]
    export = wait_for(lambda: server.http.get(f"/api/export/{pid}/{xid}").json()["data"],
                      lambda e: e["status"] in ("completed", "failed"), timeout=600, every=0.5)
    assert export["status"] == "completed", export["error"]
    return export


def unpack_bundle(server, export, folder):
    r = server.http.get(export["download_url"])
    assert r.status_code == 200
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(folder)
    return folder


def bundle_predict(folder, image, *args):
    run = subprocess.run([sys.executable, "predict.py", str(image), *args], cwd=folder, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def deploy(server, pid, export_id, name, **options):
    r = server.http.post("/api/deployments", json={"project_id": pid, "export_id": export_id, "name": name,
                                                   "min_replicas": 1, "max_replicas": 1, **options})
    assert r.status_code == 202, r.text
    created = r.json()["data"]
    assert created["status"] == "deploying" and created["url"] == f"/models/{name}/predict"
    running = wait_for(lambda: server.http.get(f"/api/deployments/{created['id']}").json()["data"],
                       lambda d: d["status"] in ("running", "failed"), timeout=300, every=0.5)
    assert running["status"] == "running", running["error"]
    return created


def undeploy(server, deployment):
    r = server.http.delete(f"/api/deployments/{deployment['id']}")
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def classifier_export(server, trained_classifier):
    pid, _, eid = trained_classifier
    return pid, export_of(server, pid, eid)


def test_endpoint_answers_as_the_bundle_does_and_guards_its_door(server, classifier_export, tmp_path):
    from ray import serve  # the session's Ray + Serve run in this process (the `server` fixture)

    pid, export = classifier_export
    name = f"colours-{uuid.uuid4().hex[:6]}"
    ingress_deployed_at = serve.status().applications["aistudio"].last_deployed_time_s
    unpacked_before = set(Path(tempfile.gettempdir()).glob("aistudio-endpoint-*"))
    keyed = deploy(server, pid, export["id"], name, max_batch_size=4, batch_wait_ms=2)
    key = keyed["api_key"]
    assert key and keyed["auth"] == "key"
    open_one = deploy(server, pid, export["id"], f"{name}-open", auth="none", max_batch_size=1)
    assert open_one["api_key"] is None
    # each replica unpacks the model to load it, then removes its copy (they used to pile up in /tmp)
    assert set(Path(tempfile.gettempdir()).glob("aistudio-endpoint-*")) <= unpacked_before
    try:
        image = server.http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
        data = server.http.get(image["url"]).content
        (tmp_path / "img.jpg").write_bytes(data)
        printed = bundle_predict(unpack_bundle(server, export, tmp_path / "bundle"), tmp_path / "img.jpg")

        with server.anon() as anon:
            auth = {"Authorization": f"Bearer {key}"}
            answers = [
                anon.post(keyed["url"], files={"file": ("img.jpg", data, "image/jpeg")}, headers=auth),
                anon.post(keyed["url"], content=data, headers={**auth, "Content-Type": "image/jpeg"}),
                anon.post(keyed["url"], json={"image_base64": base64.b64encode(data).decode()}, headers=auth),
                anon.post(open_one["url"], content=data, headers={"Content-Type": "image/jpeg"}),
            ]
            for r in answers:
                assert r.status_code == 200, r.text
                got = r.json()["data"]
                assert got["predictions"][0]["label"] == printed["label"] == image["label"]
                # the same preprocessing and softmax as predict.py: every class's score to 1e-5
                assert {p["label"]: p["score"] for p in got["predictions"]} == pytest.approx(
                    {t["label"]: t["score"] for t in printed["top"]}, abs=1e-5)
            assert answers[0].json()["data"]["model"] == name

            # the key: missing or wrong → 401; the UI's token is not this endpoint's key
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {server.token}"}):
                r = anon.post(keyed["url"], content=data, headers={**headers, "Content-Type": "image/jpeg"})
                assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED", r.text
            # a non-image in each form → 400 envelope naming what was wrong
            bad = [anon.post(keyed["url"], content=b"hello, not a jpeg", headers={**auth, "Content-Type": "image/jpeg"}),
                   anon.post(keyed["url"], files={"file": ("notes.txt", b"plain text", "text/plain")}, headers=auth),
                   anon.post(keyed["url"], json={"image_base64": "***"}, headers=auth),
                   anon.post(keyed["url"], files={"other": ("img.jpg", data, "image/jpeg")}, headers=auth),
                   anon.post(keyed["url"], content=b"{}", headers={**auth, "Content-Type": "text/plain"})]
            for r, field in zip(bad, ("image", "image", "image_base64", "file", "Content-Type")):
                assert r.status_code == 400, r.text
                assert r.json()["status"] == "error" and field in r.json()["error"]["message"], r.text

        # the UI ingress still answers beside the two endpoints, and deploying them never redeployed it
        assert server.http.get("/api/system/health").status_code == 200
        apps = serve.status().applications
        assert apps["aistudio"].last_deployed_time_s == ingress_deployed_at
        assert {f"model-{name}", f"model-{name}-open"} <= set(apps)
        # names are unique; the export and the project it serves cannot be deleted from under it
        r = server.http.post("/api/deployments", json={"project_id": pid, "export_id": export["id"], "name": name})
        assert r.status_code == 409 and "name" in r.json()["error"]["message"]
        r = server.http.delete(f"/api/export/{pid}/{export['id']}")
        assert r.status_code == 409 and name in r.json()["error"]["message"]
        r = server.http.delete(f"/api/projects/{pid}", params={"force": "true"})
        assert r.status_code == 409 and name in r.json()["error"]["message"]

        # figures come from the replicas: 3 + 3 + 5 + ... requests; the errors counted
        figures = wait_for(lambda: server.http.get(f"/api/deployments/{keyed['id']}").json()["data"],
                           lambda d: d["metrics"]["requests"] >= 11, timeout=30)
        assert figures["metrics"]["requests"] == 11 and figures["metrics"]["errors"] == 8
        assert figures["metrics"]["p50_ms"] > 0 and figures["metrics"]["p99_ms"] >= figures["metrics"]["p50_ms"]
        assert figures["replicas"] == {"running": 1, "target": 1}
        with server.anon() as anon:
            check_open_inference_protocol(anon, keyed, key, data, tmp_path / "bundle", printed)
        listed = server.http.get("/api/deployments", params={"project_id": pid}).json()["data"]
        assert {keyed["id"], open_one["id"]} <= {d["id"] for d in listed}
    finally:
        undeploy(server, keyed)
        undeploy(server, open_one)
    with server.anon() as anon:
        for url in (keyed["url"], open_one["url"]):
            r = anon.post(url, content=data, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 404, r.text
    assert server.http.get(f"/api/deployments/{keyed['id']}").status_code == 404


def check_open_inference_protocol(anon, deployed: dict, key: str, image: bytes, bundle: Path, printed: dict) -> None:
    """KServe v2 `/infer`: the image preprocessed as the bundle's preprocess.json says gives logits whose
    softmax is predict.py's answer; a batch of two answers twice; bad tensors → 400 naming the field."""
    import numpy as np

    from ray_jobs.prediction import classification, preprocess

    spec = json.loads((bundle / "preprocess.json").read_text())
    x, _ = preprocess(image, spec)
    url, auth = deployed["url"].removesuffix("/predict") + "/infer", {"Authorization": f"Bearer {key}"}

    def tensor(array, **changes):
        return {"id": "r1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(array.shape),
                                        "data": array.reshape(-1).tolist(), **changes}]}

    r = anon.post(url, json=tensor(np.concatenate([x, x])), headers=auth)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == deployed["name"] and answer["id"] == "r1"
    [out] = answer["outputs"]
    assert out["shape"][0] == 2 and out["datatype"] == "FP32"
    logits = np.asarray(out["data"], np.float32).reshape(out["shape"])
    for row in logits:
        got = classification(row, out["parameters"]["labels"])
        assert {t["label"]: t["score"] for t in got["top"]} == pytest.approx(
            {t["label"]: t["score"] for t in printed["top"]}, abs=1e-5)
    assert anon.post(url, json=tensor(x)).status_code == 401
    h, w = x.shape[2:]
    bad = [({"inputs": []}, "inputs"), (tensor(x, datatype="INT8"), "inputs[0].datatype"),
           (tensor(x, shape=[1, 3, h + 1, w]), "inputs[0].shape"), (tensor(x, shape=[0, 3, h, w]), "inputs[0].shape"),
           (tensor(x, data=[1.0, 2.0]), "inputs[0].data"), (tensor(x, data="pixels"), "inputs[0].data")]
    for body, field in bad:
        r = anon.post(url, json=body, headers=auth)
        assert r.status_code == 400 and field in r.json()["error"]["message"], (field, r.text)
    r = anon.post(url, content=b"not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "body" in r.json()["error"]["message"], r.text


def test_detection_endpoint_boxes_in_original_pixels(server, tmp_path):
    http = server.http
    source = server.import_root / f"deploy-det-{uuid.uuid4().hex[:6]}"
    make_detection_coco(source, n=8, size=64)
    pid = create_project(http, "detection", name="deploy detection")
    import_folder(http, pid, source)
    r = http.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.25, "test": 0.25, "seed": 1})
    assert r.status_code == 201, r.text
    eid = create_experiment(http, pid, r.json()["data"]["id"], name="ssd", model="ssdlite320_mobilenet_v3_large",
                            image_size=64, epochs=1, batch_size=4, augmentations=[])
    assert http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}).status_code == 202
    assert wait_experiment(http, pid, eid, timeout=600)["status"] == "completed"
    export = export_of(server, pid, eid)
    endpoint = deploy(server, pid, export["id"], f"boxes-{uuid.uuid4().hex[:6]}", auth="none")
    try:
        # an image of another size than the model's input: boxes must come back in its own pixels
        image = server.http.get(f"/api/datasets/{pid}/images?limit=1").json()["data"]["items"][0]
        Image.open(io.BytesIO(http.get(image["url"]).content)).resize((200, 150)).save(tmp_path / "wide.png")
        printed = bundle_predict(unpack_bundle(server, export, tmp_path / "bundle"), tmp_path / "wide.png",
                                 "--score-threshold", "0")
        with server.anon() as anon:
            r = anon.post(endpoint["url"], params={"score_threshold": 0},
                          files={"file": ("wide.png", (tmp_path / "wide.png").read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        got = r.json()["data"]["detections"]
        assert got, "the detector answered no box at threshold 0"
        assert [d["box"] for d in got] == printed["boxes"]
        assert [d["label"] for d in got] == printed["label_names"]
        assert [d["score"] for d in got] == pytest.approx(printed["scores"], abs=1e-5)
        assert all(0 <= x1 <= x2 <= 200.01 and 0 <= y1 <= y2 <= 150.01 for x1, y1, x2, y2 in (d["box"] for d in got))
        assert any(d["box"][2] > 64 or d["box"][3] > 64 for d in got)  # not in the 64 px input's coordinates

        # KServe v2 /infer: the raw outputs in the input tensor's pixels (no threshold), one image a request
        from ray_jobs.prediction import preprocess

        spec = json.loads((tmp_path / "bundle" / "preprocess.json").read_text())
        x, _ = preprocess((tmp_path / "wide.png").read_bytes(), spec)
        tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}
        with server.anon() as anon:
            url = endpoint["url"].removesuffix("/predict") + "/infer"
            r = anon.post(url, json={"inputs": [tensor]})
            assert r.status_code == 200, r.text
            outputs = {o["name"]: o for o in r.json()["outputs"]}
            scores = [s for s in outputs["scores"]["data"] if s >= min(d["score"] for d in got)]
            assert scores == pytest.approx([d["score"] for d in got], abs=1e-5)
            assert outputs["boxes"]["shape"] == [len(outputs["scores"]["data"]), 4]
            assert max(outputs["boxes"]["data"]) <= 64.01  # the 64 px input's coordinates
            two = {**tensor, "shape": [2, *x.shape[1:]], "data": tensor["data"] * 2}
            r = anon.post(url, json={"inputs": [two]})
            assert r.status_code == 400 and "inputs[0].shape" in r.json()["error"]["message"], r.text
    finally:
        undeploy(server, endpoint)
