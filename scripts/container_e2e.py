"""End-to-end through a running appliance's HTTP API (issue #15 item 4; scripts/container_check.sh).

    python scripts/container_e2e.py URL STATE.json                  # the walk; writes ids to STATE.json
    python scripts/container_e2e.py URL STATE.json --after-restart  # the same project is still there

The walk: create a project, upload a generated ZIP (two colour classes, 32 px), split, train one
epoch at 32 px, evaluate on the test subset, export ONNX, download the bundle and check it holds an
.onnx model. Prints one line per step with its duration; exits non-zero with the failing response.
"""

from __future__ import annotations

import io
import json
import random
import sys
import time
import uuid
import zipfile

import httpx
from PIL import Image

TERMINAL = ("completed", "failed", "stopped", "interrupted", "cancelled")


def check(r: httpx.Response, status: int) -> dict:
    if r.status_code != status:
        sys.exit(f"{r.request.method} {r.request.url.path}: {r.status_code} (wanted {status}): {r.text[:2000]}")
    return r.json()["data"] if r.headers.get("content-type", "").startswith("application/json") else {}


def wait(http: httpx.Client, path: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = check(http.get(path), 200)
        if data["status"] in TERMINAL:
            if data["status"] != "completed":
                sys.exit(f"{path} ended {data['status']}: {json.dumps(data)[:2000]}")
            return data
        if time.monotonic() > deadline:
            sys.exit(f"{path} not finished after {timeout}s: {json.dumps(data)[:2000]}")
        time.sleep(0.5)


def dataset_zip(per_class: int = 10, size: int = 32) -> bytes:
    rng = random.Random(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            for i in range(per_class):
                img = Image.new("RGB", (size, size), tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in rgb))
                out = io.BytesIO()
                img.save(out, "PNG")
                zf.writestr(f"{name}/{name}_{i:02d}.png", out.getvalue())
    return buf.getvalue()


def step(name: str, started: float) -> float:
    now = time.monotonic()
    print(f"  e2e {name}: {now - started:.1f}s", flush=True)
    return now


def walk(http: httpx.Client, state_file: str) -> None:
    t = time.monotonic()
    pid = check(http.post("/api/projects", json={"name": f"container-{uuid.uuid4().hex[:6]}",
                                                  "task": "classification"}), 201)["id"]
    job = check(http.post("/api/datasets/import/upload", data={"project_id": pid},
                          files={"file": ("colours.zip", dataset_zip(), "application/zip")}), 202)
    wait(http, f"/api/datasets/{pid}/imports/{job['id']}", timeout=120)
    t = step("project + ZIP upload", t)
    sid = check(http.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.6, "val": 0.2, "test": 0.2,
                                                      "seed": 1}), 201)["id"]
    t = step("split", t)
    eid = check(http.post(f"/api/training/{pid}/experiments", json={
        "name": "container", "split_id": sid, "model": "resnet18", "epochs": 1, "batch_size": 4,
        "image_size": 32, "scheduler": "none", "pretrained": False}), 201)["id"]
    check(http.post("/api/training/run", json={"project_id": pid, "experiment_id": eid}), 202)
    wait(http, f"/api/training/{pid}/experiments/{eid}")
    t = step("train 1 epoch", t)
    ev = check(http.post("/api/evaluation/run", json={"project_id": pid, "experiment_id": eid, "subset": "test"}), 202)
    metrics = wait(http, f"/api/evaluation/{pid}/{ev['id']}")["metrics"]
    assert metrics, "evaluation has no metrics"
    t = step("evaluate", t)
    x = check(http.post("/api/export/run", json={"project_id": pid, "experiment_id": eid, "format": "onnx"}), 202)
    wait(http, f"/api/export/{pid}/{x['id']}")
    names = bundle_names(http, pid, x["id"])
    step("export ONNX + download", t)
    print(f"  e2e bundle: {', '.join(names)}", flush=True)
    with open(state_file, "w") as f:
        json.dump({"project_id": pid, "experiment_id": eid, "export_id": x["id"]}, f)


def bundle_names(http: httpx.Client, pid: str, xid: str) -> list[str]:
    r = http.get(f"/api/export/{pid}/{xid}/download")
    check(r, 200)
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    if not any(n.endswith(".onnx") for n in names) or "labels.json" not in names:
        sys.exit(f"bundle lacks an .onnx model or labels.json: {names}")
    return names


def after_restart(http: httpx.Client, state_file: str) -> None:
    with open(state_file) as f:
        ids = json.load(f)
    pid = ids["project_id"]
    project = check(http.get(f"/api/projects/{pid}"), 200)
    if project["image_count"] != 20:
        sys.exit(f"project {pid} after restart has {project['image_count']} images, wanted 20")
    exp = check(http.get(f"/api/training/{pid}/experiments/{ids['experiment_id']}"), 200)
    if exp["status"] != "completed":
        sys.exit(f"experiment after restart: {exp['status']}")
    bundle_names(http, pid, ids["export_id"])
    print(f"  e2e after restart: project {pid} ({project['image_count']} images), experiment "
          f"{exp['status']}, bundle downloads", flush=True)


def main() -> None:
    url, state_file, *flags = sys.argv[1:]
    with httpx.Client(base_url=url, timeout=120) as http:
        (after_restart if "--after-restart" in flags else walk)(http, state_file)


if __name__ == "__main__":
    main()
