"""Epoch time of the Lightning training core vs a bare PyTorch loop, on the same work.

Both sides train the same model (random init) on the same generated images with the same
datasets, transforms, batch size, optimizer and a validation pass per epoch; the core also
writes its checkpoints. The first epoch is a warm-up and is left out. Give several sizes to see
how the cost grows:

    python benchmarks/train_epoch.py --images 128 256 --image-size 32 64 --epochs 3

Prints one line per size and a JSON line (`{"benchmark": "train_epoch", ...}`). Wall times
suffer when other processes share the CPUs; `*_cpu_s` (process CPU time of the whole run,
warm-up included) is the steadier comparison there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_jobs.core import TrainConfig, build_model, fit_local  # noqa: E402
from ray_jobs.core.data import ClassificationDataset, eval_transform, train_transform  # noqa: E402

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30)]


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> list[dict]:
    """Noisy colour-coded JPEGs, one class per colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        label = i % len(COLOURS)
        pixels = np.clip(np.array(COLOURS[label]) + rng.integers(-40, 41, (size, size, 3)), 0, 255)
        path = folder / f"{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        samples.append({"path": str(path), "label": label})
    return samples


def make_config(model: str, image_size: int, batch_size: int, epochs: int, num_workers: int) -> TrainConfig:
    return TrainConfig(
        model=model,
        num_classes=len(COLOURS),
        class_names=[f"c{i}" for i in range(len(COLOURS))],
        epochs=epochs,
        batch_size=batch_size,
        optimizer="adamw",
        scheduler="cosine",
        image_size=image_size,
        augmentations=["hflip"],
        num_workers=num_workers,
    )


def cpu_timed(function, *args) -> tuple[list[dict], float]:
    start = time.process_time()
    return function(*args), time.process_time() - start


def run_core(config: TrainConfig, train: list[dict], val: list[dict], run_dir: Path, accelerator: str) -> list[dict]:
    events: list[dict] = []
    fit_local(config, train, val, run_dir, publish=events.append, accelerator=accelerator)
    return events


def run_bare(config: TrainConfig, train: list[dict], val: list[dict], device: str) -> list[dict]:
    """The loop one would write by hand: per epoch, train then validate (accuracy)."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.num_classes, pretrained=False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    amp = device == "cuda" and config.mixed_precision
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else nullcontext
    loader_args = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                       persistent_workers=config.num_workers > 0, pin_memory=device == "cuda")
    train_loader = DataLoader(
        ClassificationDataset(train, train_transform("classification", config.image_size, config.augmentations)),
        shuffle=True, drop_last=len(train) % config.batch_size == 1, **loader_args,
    )
    val_loader = DataLoader(ClassificationDataset(val, eval_transform("classification", config.image_size)),
                            **loader_args)
    epochs = []
    for _ in range(config.epochs):
        start = time.perf_counter()
        model.train()
        images = 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            images += len(y)
        if device == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad(), autocast():
            for x, y in val_loader:
                correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        epochs.append({"seconds": time.perf_counter() - start, "images_per_s": images / train_seconds,
                       "val_metric": correct / len(val)})
    return epochs


def after_warmup(epochs: list[dict], key: str) -> float:
    return statistics.mean(e[key] for e in epochs[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[256], help="training images (val: a quarter)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[64])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="including the warm-up epoch")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is a warm-up)")

    rows = []
    with tempfile.TemporaryDirectory(prefix="train_epoch_") as tmp:
        for count in args.images:
            for size in args.image_size:
                folder = Path(tmp) / f"{count}_{size}"
                train = make_images(folder / "train", count, size, seed=1)
                val = make_images(folder / "val", max(count // 4, 4), size, seed=2)
                config = make_config(args.model, size, args.batch_size, args.epochs, args.num_workers)
                accelerator = "gpu" if args.device == "cuda" else "cpu"
                core, core_cpu = cpu_timed(run_core, config, train, val, folder / "run", accelerator)
                bare, bare_cpu = cpu_timed(run_bare, config, train, val, args.device)
                row = {
                    "images": count, "image_size": size, "batch_size": args.batch_size, "model": args.model,
                    "device": args.device,
                    "core_epoch_s": round(after_warmup(core, "seconds"), 3),
                    "bare_epoch_s": round(after_warmup(bare, "seconds"), 3),
                    "core_train_images_per_s": round(after_warmup(core, "images_per_s"), 1),
                    "bare_train_images_per_s": round(after_warmup(bare, "images_per_s"), 1),
                    "core_cpu_s": round(core_cpu, 2),
                    "bare_cpu_s": round(bare_cpu, 2),
                }
                row["epoch_time_ratio"] = round(row["core_epoch_s"] / row["bare_epoch_s"], 3)
                row["cpu_time_ratio"] = round(core_cpu / bare_cpu, 3)
                rows.append(row)
                print(
                    f"{count:>6} images {size:>4}px  core {row['core_epoch_s']:.2f} s/epoch  "
                    f"bare {row['bare_epoch_s']:.2f} s/epoch  ratio {row['epoch_time_ratio']:.2f}  "
                    f"cpu-time ratio {row['cpu_time_ratio']:.2f}  "
                    f"(train img/s core {row['core_train_images_per_s']} / bare {row['bare_train_images_per_s']})",
                    flush=True,
                )
    print(json.dumps({"benchmark": "train_epoch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "results": rows}))


if __name__ == "__main__":
    main()
