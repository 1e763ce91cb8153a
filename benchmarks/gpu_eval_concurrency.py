"""GPU check: one evaluation vs four concurrent fractional-GPU evaluations of the same model.

Each evaluation runs `ray_jobs.core.inference.predict_checkpoint` — the code an evaluation task
runs — with its CUDA memory capped at 0.25 of the card. With Ray installed the four run as Ray
tasks with `num_gpus=0.25` (the appliance's path); without Ray (e.g. a bare GPU box) as four
processes with the same cap. Target: four finish in < 1.5x the time of one.

Prints a JSON line. Exit 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_jobs.core.catalog import build_model  # noqa: E402
from ray_jobs.core.data import preprocess_spec  # noqa: E402
from ray_jobs.core.module import TrainConfig  # noqa: E402

FRACTION = 0.25


def make_checkpoint(folder: Path, model_name: str, image_size: int) -> Path:
    """A checkpoint in the training core's format, from a randomly initialised model."""
    config = TrainConfig(model=model_name, num_classes=10, class_names=[f"c{i}" for i in range(10)], image_size=image_size)
    model = build_model(model_name, 10, pretrained=False, image_size=image_size)
    path = folder / "model.ckpt"
    torch.save({
        "hyper_parameters": {"config": config.to_dict(), "preprocess": preprocess_spec(config.task, image_size)},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "epoch": 0,
    }, path)
    return path


def make_images(folder: Path, n: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def evaluate(checkpoint: str, paths: list[str], batch: int, workers: int = 3) -> tuple[float, float]:
    """One evaluation as a task runs it: load the checkpoint, predict every path. Returns its
    (start, end) wall-clock times, so the caller can tell whether evaluations overlapped."""
    from ray_jobs.core.inference import predict_checkpoint

    torch.set_num_threads(2)  # four evaluations share the host's cores as well as the GPU
    start = time.time()
    predict_checkpoint(checkpoint, paths, "cuda", FRACTION, batch, num_workers=workers)
    torch.cuda.synchronize()
    return start, time.time()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans running at the same instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def _worker(args):
    return evaluate(*args)


def run_concurrent(n: int, checkpoint: str, paths: list[str], batch: int, workers: int,
                   use_ray: bool) -> tuple[float, int]:
    """Wall time of n evaluations started together, each in its own process (start-up included),
    and how many of them ran at the same time."""
    t0 = time.perf_counter()
    if use_ray:
        import ray

        task = ray.remote(num_gpus=FRACTION, num_cpus=1)(evaluate)
        spans = ray.get([task.remote(checkpoint, paths, batch, workers) for _ in range(n)])
    else:
        # Not multiprocessing.Pool: its daemonic workers may not start DataLoader workers.
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
            spans = list(pool.map(_worker, [(checkpoint, paths, batch, workers)] * n))
    return time.perf_counter() - t0, most_at_once(spans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=3, help="decode workers per evaluation")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_eval_concurrency", "error": "CUDA is not available"}))
        return 2
    try:
        import ray

        ray.init(num_gpus=torch.cuda.device_count(), include_dashboard=False)
        use_ray = True
    except Exception:
        use_ray = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = str(make_checkpoint(folder, args.model, args.size))
        paths = make_images(folder, args.images, args.size)
        run_concurrent(1, checkpoint, paths[: args.batch], args.batch, args.workers, use_ray)  # warm-up
        one, _ = run_concurrent(1, checkpoint, paths, args.batch, args.workers, use_ray)
        four, at_once = run_concurrent(4, checkpoint, paths, args.batch, args.workers, use_ray)
    result = {
        "benchmark": "gpu_eval_concurrency", "gpu": torch.cuda.get_device_name(0), "runner": "ray" if use_ray else "processes",
        "model": args.model, "decode_workers": args.workers, "images_per_evaluation": args.images, "image_size": args.size, "gpu_fraction": FRACTION,
        "one_s": round(one, 2), "four_concurrent_s": round(four, 2), "ratio_four_vs_one": round(four / one, 3),
        "images_per_s_one": round(args.images / one, 1), "images_per_s_four": round(4 * args.images / four, 1),
        "four_ran_at_once": at_once, "target": "< 1.5",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
