"""GPU check of the Ray-free training core (needs CUDA; works without Ray).

On generated images in a temp dir it:
1. imports the core and confirms Ray was not needed;
2. trains a classifier with `fit_local` on CUDA (16-mixed) and a bare CUDA loop on the same
   data (from train_epoch.py), reporting training images/s after the warm-up epoch and GPU
   utilisation sampled with NVML (nvidia-ml-py; skipped when missing);
3. reloads the best checkpoint and predicts on CUDA;
4. trains a detector (SSDLite) for one epoch on CUDA when pycocotools is installed;
5. (issue #14 item 4) trains ResNet-50 at 224 px on generated 500-640 px photos with `fit_local`
   reading the decoded cache (built in epoch 1), channels_last and bf16/fp16 autocast, and reports
   NVML GPU busy % over the cached epochs (target >= 90 %). `--allow-cpu` runs it tiny on the CPU.

Prints a JSON line (`{"benchmark": "gpu_check", ...}`). Exit status: 2 without CUDA, 1 when a
check fails, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_epoch import make_config, make_images, run_bare  # noqa: E402


class GpuSampler:
    """Samples GPU 0's utilisation and memory every `interval` seconds while in a `with` block."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.samples: list[tuple[int, int]] = []
        self.times: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # missing package, driver without NVML, MIG slice
            self.error = f"NVML unavailable: {exc}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            self.samples.append((rates.gpu, memory.used // 2**20))
            self.times.append(time.perf_counter())

    def __enter__(self) -> GpuSampler:
        self.samples.clear()
        self.times.clear()
        self._stop.clear()
        if self.error is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, since: float | None = None) -> dict:
        """Over all samples, or those taken after `since` (a perf_counter time)."""
        samples = [s for s, t in zip(self.samples, self.times) if since is None or t >= since]
        if self.error is not None or not samples:
            return {"error": self.error or "no samples"}
        utils = [u for u, _ in samples]
        return {
            "util_mean_pct": round(statistics.mean(utils), 1),
            "util_max_pct": max(utils),
            "mem_used_max_mib": max(m for _, m in samples),
            "samples": len(samples),
        }


def busy_check(root: Path, args, device: str, sampler: GpuSampler) -> dict:
    """ResNet-50 at 224 px through the core on full-size photos: epoch 1 builds the decoded cache,
    later epochs read it (channels_last + AMP on CUDA); GPU busy % over those later epochs."""
    import ray_jobs.core as core

    cpu = device == "cpu"
    count, size = (16, 32) if cpu else (args.busy_images, 224)
    photos = (64, 80) if cpu else (500, 640)
    train = make_images(root / "busy" / "train", count, photos, seed=3)
    val = make_images(root / "busy" / "val", max(count // 8, 8), photos, seed=4)
    config = make_config(args.busy_model, size, 8 if cpu else args.busy_batch_size, args.busy_epochs, None)
    marks: list[float] = []
    events: list[dict] = []

    def publish(event: dict) -> None:
        marks.append(time.perf_counter())
        events.append(event)

    with sampler:
        core.fit_local(config, train, val, root / "busy_run", publish=publish, cache_dir=root / "busy_cache")
    cached_epochs = events[1:]
    return {
        "model": args.busy_model, "images": count, "image_size": size, "photo_size": list(photos),
        "batch_size": config.batch_size, "epochs": len(events),
        "precision": ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if not cpu else "32-true",
        "channels_last": not cpu,
        "cache_files": sorted(p.name for p in (root / "busy_cache").glob("*.npy")),
        "epoch1_seconds_with_cache_build": round(events[0]["seconds"], 2),
        "cached_epoch_seconds": round(statistics.mean(e["seconds"] for e in cached_epochs), 2) if cached_epochs else None,
        "cached_train_images_per_s": round(statistics.mean(e["images_per_s"] for e in cached_epochs), 1)
        if cached_epochs else None,
        "gpu_cached_epochs": sampler.summary(since=marks[0]) if marks else {"error": "no epoch"},
    }


def make_boxes(folder: Path, count: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        pixels = np.full((size, size, 3), 128, np.uint8)
        w, h = (int(v) for v in rng.integers(size // 6, size // 3, 2))
        x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
        label = i % 2
        pixels[y : y + h, x : x + w] = (220, 30, 30) if label == 0 else (30, 200, 30)
        path = folder / f"{i}.png"
        Image.fromarray(pixels).save(path)
        samples.append({"path": str(path), "boxes": [[x, y, x + w, y + h]], "labels": [label]})
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="including the warm-up epoch")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--detection-images", type=int, default=64)
    parser.add_argument("--busy-images", type=int, default=2048, help="photos of the ResNet-50 busy check")
    parser.add_argument("--busy-model", default="resnet50")
    parser.add_argument("--busy-batch-size", type=int, default=128)
    parser.add_argument("--busy-epochs", type=int, default=3, help="epoch 1 builds the cache")
    parser.add_argument("--skip-busy", action="store_true", help="skip the ResNet-50 busy check")
    parser.add_argument("--allow-cpu", action="store_true", help="dry-run the script on a CPU host")
    args = parser.parse_args(argv)

    report: dict = {"benchmark": "gpu_check", "python": platform.python_version(), "torch": torch.__version__}
    for package in ("torchvision", "lightning", "torchmetrics"):
        module = __import__(package)
        report[package] = module.__version__
    if not torch.cuda.is_available() and not args.allow_cpu:
        report["error"] = "CUDA is not available"
        print(json.dumps(report))
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"

    import ray_jobs.core as core

    report["ray_installed"] = find_spec("ray") is not None
    report["ray_imported_by_core"] = "ray" in sys.modules
    checks: dict[str, str] = {}
    sampler = GpuSampler()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        train = make_images(root / "train", args.images, args.image_size, seed=1)
        val = make_images(root / "val", max(args.images // 8, 8), args.image_size, seed=2)
        report["data_seconds"] = round(time.perf_counter() - start, 1)
        config = make_config(args.model, args.image_size, args.batch_size, args.epochs, args.num_workers)
        report["classification"] = {
            "model": args.model, "images": args.images, "image_size": args.image_size,
            "batch_size": args.batch_size, "epochs": args.epochs, "num_workers": args.num_workers,
        }

        try:
            events: list[dict] = []
            with sampler:
                result = core.fit_local(config, train, val, root / "run", publish=events.append)
            report["core"] = {
                "train_images_per_s": round(statistics.mean(e["images_per_s"] for e in events[1:]), 1),
                "epoch_seconds": round(statistics.mean(e["seconds"] for e in events[1:]), 2),
                "val_metric": events[-1]["val_metric"],
                "gpu": sampler.summary(),
            }
            checks["core_fit"] = "ok" if len(events) == args.epochs and result["best_ckpt"] else "no events"
        except Exception:
            checks["core_fit"] = traceback.format_exc(limit=5)

        try:
            with sampler:
                bare = run_bare(config, train, val, device)
            report["bare"] = {
                "train_images_per_s": round(statistics.mean(e["images_per_s"] for e in bare[1:]), 1),
                "epoch_seconds": round(statistics.mean(e["seconds"] for e in bare[1:]), 2),
                "val_metric": bare[-1]["val_metric"],
                "gpu": sampler.summary(),
            }
            checks["bare_loop"] = "ok"
        except Exception:
            checks["bare_loop"] = traceback.format_exc(limit=5)
        if "core" in report and "bare" in report:
            report["core_vs_bare_images_per_s"] = round(
                report["core"]["train_images_per_s"] / report["bare"]["train_images_per_s"], 3
            )

        try:
            model, meta = core.load_checkpoint(result["best_ckpt"])
            sample = val[:16]
            predictions = core.predict_images(model, meta, [s["path"] for s in sample], batch_size=8, device=device)
            checks["predict"] = "ok" if len(predictions) == len(sample) else "wrong count"
            report["predict_accuracy"] = sum(p["label"] == s["label"] for p, s in zip(predictions, sample)) / len(sample)
        except Exception:
            checks["predict"] = traceback.format_exc(limit=5)

        if find_spec("pycocotools") is None:
            checks["detection"] = "skipped: pycocotools not installed"
        else:
            try:
                boxes = make_boxes(root / "det", args.detection_images, 160)
                det_config = core.TrainConfig(
                    model="ssdlite320_mobilenet_v3_large", num_classes=2, class_names=["red", "green"],
                    epochs=1, batch_size=16, image_size=320, augmentations=["hflip"],
                    num_workers=args.num_workers,
                )
                det_events: list[dict] = []
                core.fit_local(det_config, boxes, boxes[:16], root / "det_run", publish=det_events.append)
                report["detection"] = {k: det_events[0][k] for k in ("train_loss", "val_loss", "val_metric", "images_per_s")}
                checks["detection"] = "ok"
            except Exception:
                checks["detection"] = traceback.format_exc(limit=5)

        if args.skip_busy:
            checks["busy"] = "skipped: --skip-busy"
        else:
            try:
                report["busy"] = busy_check(root, args, device, sampler)
                util = report["busy"]["gpu_cached_epochs"].get("util_mean_pct")
                report["busy_target_90pct_met"] = None if util is None else util >= 90
                checks["busy"] = "ok"
            except Exception:
                checks["busy"] = traceback.format_exc(limit=5)

    report["checks"] = checks
    failed = [name for name, outcome in checks.items() if outcome != "ok" and not outcome.startswith("skipped")]
    report["ok"] = not failed
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
