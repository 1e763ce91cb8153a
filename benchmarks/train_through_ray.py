"""Training epoch time through the whole appliance (HTTP → Ray task → Ray Train V2 worker →
Lightning core, events to the DB and the bus) vs the bare PyTorch loop of train_epoch.py on the
same images, model, batch size and epochs, in the same run. The fixed cost of a run (Ray Train
start-up until the first epoch begins) is reported separately.

    .venv/bin/python benchmarks/train_through_ray.py [--images 256] [--image-size 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_epoch import COLOURS, after_warmup, make_config, make_images, run_bare  # noqa: E402

from appliance.config import Settings  # noqa: E402
from appliance.runtime import start_appliance, stop_appliance  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(fetch, done, timeout=1800):
    deadline = time.monotonic() + timeout
    while not done(value := fetch()):
        if time.monotonic() > deadline:
            raise TimeoutError(value)
        time.sleep(0.5)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images (val: a quarter)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="including the warm-up epoch")
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="aistudio-bench-"))
    imports = root / "imports"
    settings = Settings(workspace=root / "ws", import_roots=[imports], port=free_port(), ray_dashboard_port=free_port())
    # The same generated images for both paths; the import needs one folder per class (hard links).
    train = make_images(root / "gen" / "train", args.images, args.image_size)
    val = make_images(root / "gen" / "val", max(args.images // 4, len(COLOURS)), args.image_size, seed=1)
    for subset, samples in (("train", train), ("val", val)):
        for sample in samples:
            target = imports / "data" / f"c{sample['label']:02d}" / f"{subset}-{Path(sample['path']).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.hardlink_to(sample["path"])

    t0 = time.perf_counter()
    url = start_appliance(settings)
    startup_s = time.perf_counter() - t0
    http = httpx.Client(base_url=url, timeout=120)
    try:
        pid = http.post("/api/projects", json={"name": "bench", "task": "classification"}).json()["data"]["id"]
        job = http.post("/api/datasets/import/local", json={"project_id": pid, "source_path": str(imports / "data"),
                                                            "format": "folder"}).json()["data"]
        wait(lambda: http.get(f"/api/datasets/{pid}/imports/{job['id']}").json()["data"]["status"],
             lambda s: s not in ("queued", "running"))
        # A split with the generated train/val sizes (same image counts as the bare loop).
        n_train, n_val = len(train), len(val)
        split = http.post(f"/api/splits/{pid}", json={
            "name": "bench", "train": n_train / (n_train + n_val), "val": n_val / (n_train + n_val), "test": 0,
            "seed": 0, "stratified": True}).json()["data"]
        exp = http.post(f"/api/training/{pid}/experiments", json={
            "name": "bench", "split_id": split["id"], "model": args.model, "epochs": args.epochs,
            "batch_size": args.batch_size, "image_size": args.image_size, "augmentations": ["hflip"],
            "optimizer": "adamw", "scheduler": "cosine"}).json()["data"]
        t_run = time.perf_counter()
        http.post("/api/training/run", json={"project_id": pid, "experiment_id": exp["id"]})
        wait(lambda: http.get(f"/api/training/{pid}/experiments/{exp['id']}").json()["data"],
                     lambda e: e["epochs_done"] >= 1 or e["status"] in ("failed", "interrupted"))
        t_first = time.perf_counter()
        done = wait(lambda: http.get(f"/api/training/{pid}/experiments/{exp['id']}").json()["data"],
                    lambda e: e["status"] in ("completed", "failed", "stopped", "interrupted"))
    finally:
        stop_appliance(settings)
    if done["status"] != "completed":
        raise SystemExit(f"training ended {done['status']}: {done['error']}")
    history = done["history"]
    fixed_s = (t_first - t_run) - history[0]["seconds"]

    # Ray gives the Train worker one CPU (OMP_NUM_THREADS=1): the bare loop gets the same.
    import torch

    torch.set_num_threads(1)
    config = make_config(args.model, args.image_size, args.batch_size, args.epochs, 0)
    bare = run_bare(config, train, val, "cpu")
    ours_epoch = after_warmup(history, "seconds")
    bare_epoch = after_warmup(bare, "seconds")
    result = {
        "benchmark": "train_through_ray", "model": args.model, "images": args.images, "image_size": args.image_size,
        "batch_size": args.batch_size, "epochs": args.epochs, "appliance_startup_s": round(startup_s, 1),
        "run_fixed_cost_s": round(fixed_s, 1), "ours_epoch_s": round(ours_epoch, 3), "bare_epoch_s": round(bare_epoch, 3),
        "epoch_time_ratio": round(ours_epoch / bare_epoch, 3), "target": "<= 1.10", "threads": 1,
        "ours_val_metric": history[-1]["val_metric"], "bare_val_metric": bare[-1]["val_metric"],
    }
    print(f"appliance start-up {startup_s:.1f} s; run fixed cost (Ray Train start-up) {fixed_s:.1f} s")
    print(f"epoch after warm-up: through Ray {ours_epoch:.2f} s vs bare loop {bare_epoch:.2f} s → {ours_epoch / bare_epoch:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
