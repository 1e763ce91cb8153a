"""Training epochs on full-size photos: the core with its decoded cache vs two bare PyTorch loops.

Generates `--images` noisy colour-coded JPEG photos (500–640 px a side, 4 classes, ImageFolder layout;
val: a tenth) and, in each of `--rounds` rounds, interleaved:

  core    `fit_local` with a decoded cache (ray_jobs/core/cache.py) in a fresh folder: epoch 1 decodes
          every photo once into the cache and trains, epoch 2 reads the cache.
  cached  a bare loop over the SAME cache files: plain Dataset (memmap row -> the same v2 hflip /
          scale / normalize), DataLoader, AdamW, a validation pass and a `torch.save` per epoch — what
          one would write by hand. Target: core epoch 2 <= 1.05 x this loop's epoch 2.
  folder  a bare torchvision `ImageFolder` loop decoding and resizing every photo every epoch (Resize,
          RandomHorizontalFlip, ToTensor, Normalize; DataLoader workers as the host allows, the same
          number the core decodes its cache with). Target: core epoch 2 >= 2 x faster than its epoch 2.

All three train the same model (random init, seed 0), batch size, optimizer and image size; the
first epoch of each is a warm-up and only epoch 2 is compared. Before the rounds each loop runs once,
untimed, on 4 batches of photos (a process's first models trained 6-8x slower a step than later ones),
and the loops' order rotates every round (core-cached-folder, cached-folder-core, folder-core-cached). Epochs are timed end to end (train,
validation, checkpoint) in wall time and CPU time (this process plus DataLoader workers that
exited). Ratios are medians over rounds. Load average is printed before and after.

    python benchmarks/train_epoch.py                        # --images 2000 --image-size 64 --rounds 1
    python benchmarks/train_epoch.py --rounds 3             # every loop once in each position

The last line is one JSON line (`{"benchmark": "train_epoch", ...}`).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit_json, load_avg, machine  # noqa: E402

from ray_jobs.core import TrainConfig, build_model, fit_local  # noqa: E402
from ray_jobs.core.cache import open_or_build  # noqa: E402
from ray_jobs.core.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataset,
    eval_transform,
    loader_options,
    train_transform,
)

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30)]


def make_images(folder: Path, count: int, size: int | tuple[int, int] = (500, 640), seed: int = 0,
                quality: int = 90) -> list[dict]:
    """Noisy colour-coded JPEGs, one class per colour, in `folder/c<label>/` (ImageFolder's layout).
    `size`: a side, or a (low, high) range each image's width and height are drawn from."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        label = i % len(COLOURS)
        if isinstance(size, int):
            width = height = size
        else:
            width, height = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
        # Low-resolution noise scaled up: photo-like JPEG sizes, generated fast.
        noise = rng.integers(-40, 41, (max(height // 8, 1), max(width // 8, 1), 3))
        small = np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        path = folder / f"c{label}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=quality)
        samples.append({"path": str(path), "label": label})
    return samples


def make_config(model: str, image_size: int, batch_size: int, epochs: int, num_workers: int | None = None) -> TrainConfig:
    return TrainConfig(
        model=model, num_classes=len(COLOURS), class_names=[f"c{i}" for i in range(len(COLOURS))],
        epochs=epochs, batch_size=batch_size, optimizer="adamw", scheduler="cosine", image_size=image_size,
        augmentations=["hflip"], num_workers=num_workers,
    )


def cpu_now() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers that exited)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU time at each mark; `epochs()` gives per-epoch deltas."""

    def __init__(self):
        self.marks = [(time.perf_counter(), cpu_now())]

    def mark(self, *_):
        self.marks.append((time.perf_counter(), cpu_now()))

    def epochs(self) -> list[dict]:
        return [{"wall_s": b[0] - a[0], "cpu_s": b[1] - a[1]} for a, b in zip(self.marks, self.marks[1:])]


def run_core(config: TrainConfig, train: list[dict], val: list[dict], run_dir: Path, cache_dir: Path,
             device: str) -> list[dict]:
    """Epoch boundaries from the epoch events (published after validation, before the checkpoint)."""
    clock = Clock()
    fit_local(config, train, val, run_dir, publish=clock.mark, accelerator="gpu" if device == "cuda" else "cpu",
              cache_dir=cache_dir)
    return clock.epochs()


class MemmapDataset(Dataset):
    def __init__(self, pixels: np.ndarray, labels: list[int], transform):
        self.pixels, self.labels, self.transform = pixels, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        chw = torch.from_numpy(np.ascontiguousarray(self.pixels[i].transpose(2, 0, 1)))  # NCHW batches
        return self.transform(tv_tensors.Image(chw)), self.labels[i]


def bare_loop(config: TrainConfig, train_loader: DataLoader, val_loader: DataLoader, device: str,
              checkpoint: Path) -> list[dict]:
    """The loop one would write by hand: per epoch train, validate (accuracy), save a checkpoint."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.num_classes, pretrained=False).to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    amp = device == "cuda" and config.mixed_precision
    clock = Clock()
    for _ in range(config.epochs):
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            for x, y in val_loader:
                correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        if device == "cuda":
            torch.cuda.synchronize()
        clock.mark()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    return clock.epochs()


def run_cached(config: TrainConfig, train: list[dict], val: list[dict], cache_dir: Path, device: str,
               checkpoint: Path) -> list[dict]:
    """The bare loop over the core's cache files (opened, never rebuilt here)."""
    from torchvision.transforms import v2

    train_cache = open_or_build(train, "classification", config.image_size, cache_dir, "train")
    val_cache = open_or_build(val, "classification", config.image_size, cache_dir, "val")
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    options = loader_options(cuda=device == "cuda", cached=True)
    train_loader = DataLoader(MemmapDataset(train_cache.pixels, [s["label"] for s in train],
                                            v2.Compose([v2.RandomHorizontalFlip(), *tail])),
                              batch_size=config.batch_size, shuffle=True, **options)
    val_loader = DataLoader(MemmapDataset(val_cache.pixels, [s["label"] for s in val], v2.Compose(tail)),
                            batch_size=config.batch_size, **options)
    return bare_loop(config, train_loader, val_loader, device, checkpoint)


def run_folder(config: TrainConfig, root: Path, device: str, checkpoint: Path) -> list[dict]:
    """A bare torchvision ImageFolder loop: every photo decoded and resized every epoch."""
    from torchvision import datasets
    from torchvision import transforms as T

    size = (config.image_size, config.image_size)
    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    workers = loader_options(cuda=device == "cuda", cached=False)["num_workers"]
    options = {"num_workers": workers, "pin_memory": device == "cuda"}
    train_loader = DataLoader(datasets.ImageFolder(str(root / "train"), T.Compose([T.Resize(size), T.RandomHorizontalFlip(), *tail])),
                              batch_size=config.batch_size, shuffle=True, **options)
    val_loader = DataLoader(datasets.ImageFolder(str(root / "val"), T.Compose([T.Resize(size), *tail])),
                            batch_size=config.batch_size, **options)
    return bare_loop(config, train_loader, val_loader, device, checkpoint)


# ---- kept for gpu_check.py, gpu_ray_check.py and train_through_ray.py: the per-file bare loop


def run_bare(config: TrainConfig, train: list[dict], val: list[dict], device: str) -> list[dict]:
    """The loop one would write by hand: per epoch, train then validate (accuracy)."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.num_classes, pretrained=False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    amp = device == "cuda" and config.mixed_precision
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else nullcontext
    workers = config.num_workers or 0
    loader_args = dict(batch_size=config.batch_size, num_workers=workers,
                       persistent_workers=workers > 0, pin_memory=device == "cuda")
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
    parser.add_argument("--images", type=int, default=2000, help="training photos (val: a tenth)")
    parser.add_argument("--photo-size", type=int, nargs=2, default=[500, 640], help="side range of the photos")
    parser.add_argument("--image-size", type=int, default=64, help="the experiment's image size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (ratios: medians)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)

    load_before = load_avg()
    print(f"load average before: {load_before}  cpus: {machine()['cpus']}  torch threads: {torch.get_num_threads()}",
          flush=True)
    config = make_config(args.model, args.image_size, args.batch_size, epochs=2)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="train_epoch_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        train = make_images(root / "train", args.images, tuple(args.photo_size), seed=1)
        val = make_images(root / "val", max(args.images // 10, 8), tuple(args.photo_size), seed=2)
        print(f"generated {len(train)} + {len(val)} photos {args.photo_size[0]}-{args.photo_size[1]} px "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        # Warm-up: the first models a process trains ran 6-8x slower a step than later ones (README), which
        # favoured whichever loop ran last. Each loop runs once, untimed, on a slice of the photos first.
        start = time.perf_counter()
        warm = make_config(args.model, args.image_size, args.batch_size, epochs=1)
        few, few_val = train[: args.batch_size * 4], val[: args.batch_size]
        warm_root = root / "warm"
        for sample in few + few_val:  # an ImageFolder tree of the slice
            target = warm_root / ("val" if sample in few_val else "train") / Path(sample["path"]).parent.name
            target.mkdir(parents=True, exist_ok=True)
            (target / Path(sample["path"]).name).symlink_to(sample["path"])
        run_core(warm, few, few_val, root / "warm-run", root / "warm-cache", args.device)
        run_cached(warm, few, few_val, root / "warm-cache", args.device, root / "bare.pt")
        run_folder(warm, warm_root, args.device, root / "bare.pt")
        print(f"warm-up (each loop once on {len(few)} photos) took {time.perf_counter() - start:.0f} s", flush=True)
        loops = ["core", "cached", "folder"]
        for r in range(args.rounds):
            cache_dir = root / f"cache{r}"
            order = loops[r % 3:] + loops[: r % 3]  # rotated each round: no loop always runs last
            if order.index("cached") < order.index("core"):  # the bare loop reads the core's cache files
                open_or_build(train, "classification", config.image_size, cache_dir, "train")
                open_or_build(val, "classification", config.image_size, cache_dir, "val")
            runs = {}
            for name in order:
                if name == "core":
                    if cache_dir.exists() and "cached" in runs:
                        shutil.rmtree(cache_dir)  # the core builds its own cache in epoch 1, as in the appliance
                    runs[name] = run_core(config, train, val, root / f"run{r}", cache_dir, args.device)
                elif name == "cached":
                    runs[name] = run_cached(config, train, val, cache_dir, args.device, root / "bare.pt")
                else:
                    runs[name] = run_folder(config, root, args.device, root / "bare.pt")
            core, cached, folder = runs["core"], runs["cached"], runs["folder"]
            shutil.rmtree(cache_dir, ignore_errors=True)
            row = {"round": r + 1, "order": order}
            for name, epochs in (("core", core), ("cached", cached), ("folder", folder)):
                row[f"{name}_epoch1_s"] = round(epochs[0]["wall_s"], 2)
                row[f"{name}_epoch2_s"] = round(epochs[1]["wall_s"], 2)
                row[f"{name}_epoch2_cpu_s"] = round(epochs[1]["cpu_s"], 2)
            rounds.append(row)
            print(f"round {r + 1}: epoch 2 wall  core {row['core_epoch2_s']:.1f} s  bare-cached "
                  f"{row['cached_epoch2_s']:.1f} s  ImageFolder {row['folder_epoch2_s']:.1f} s   (epoch 1: core "
                  f"{row['core_epoch1_s']:.1f} s incl. the cache build, ImageFolder {row['folder_epoch1_s']:.1f} s)  "
                  f"load {load_avg()}", flush=True)

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(row[a] / row[b] for row in rounds), 3)

    summary = {
        "core_vs_bare_cached_wall": ratio("core_epoch2_s", "cached_epoch2_s"),
        "core_vs_bare_cached_cpu": ratio("core_epoch2_cpu_s", "cached_epoch2_cpu_s"),
        "imagefolder_vs_core_wall": ratio("folder_epoch2_s", "core_epoch2_s"),
        "imagefolder_vs_core_cpu": ratio("folder_epoch2_cpu_s", "core_epoch2_cpu_s"),
    }
    summary["target_core_le_1_05x_bare_cached"] = summary["core_vs_bare_cached_wall"] <= 1.05
    summary["target_core_ge_2x_faster_than_imagefolder"] = summary["imagefolder_vs_core_wall"] >= 2.0
    load_after = load_avg()
    print(f"core / bare loop on the same cache: wall x{summary['core_vs_bare_cached_wall']:.3f}  cpu "
          f"x{summary['core_vs_bare_cached_cpu']:.3f}  (target <= 1.05)")
    print(f"ImageFolder / core, epoch 2: wall x{summary['imagefolder_vs_core_wall']:.2f}  cpu "
          f"x{summary['imagefolder_vs_core_cpu']:.2f}  (target >= 2)")
    print(f"load average after: {load_after}", flush=True)
    emit_json("train_epoch", images=args.images, val_images=max(args.images // 10, 8), photo_size=args.photo_size,
              image_size=args.image_size, batch_size=args.batch_size, model=args.model, device=args.device,
              rounds=rounds, **summary, torch=torch.__version__, threads=torch.get_num_threads(),
              dataloader_workers_decoding=loader_options(cuda=args.device == "cuda")["num_workers"],
              machine=machine(), load_before=load_before, load_after=load_after)


if __name__ == "__main__":
    main()
