"""Load a training checkpoint and predict, with exactly the preprocessing exported models document."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from PIL import Image

from .catalog import build_model
from .data import _normalize, _scale, load_rgb
from .module import TrainConfig


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The bare torchvision model (eval mode) and its meta; needs no pretrained weights file."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    config = TrainConfig.from_dict(hparams["config"])
    model = build_model(config.model, config.num_classes, pretrained=False, image_size=config.image_size)
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    model.eval()
    callback_state = next(
        (state for key, state in checkpoint.get("callbacks", {}).items() if "BestLastCheckpoint" in key), {}
    )
    meta = {
        "task": config.task,
        "model": config.model,
        "class_names": config.class_names,
        "num_classes": config.num_classes,
        "image_size": config.image_size,
        "preprocess": hparams["preprocess"],
        "epoch": checkpoint.get("epoch", -1) + 1,
        "best_metric": callback_state.get("best_metric"),
        "config": config.to_dict(),
    }
    return model, meta


# Images per batch on the model: 16 (what measured fastest for resnet18 at 128 px on one CPU
# thread, and the old fixed batch), 32 for inputs up to 64 px (measured faster there), fewer for
# large inputs so a batch stays within 16 images of 320 px (activation memory).
BATCH = 16
SMALL_IMAGE = 64
MAX_BATCH_PIXELS = BATCH * 320 * 320


def batch_size_for(image_size: int) -> int:
    """Images per batch for `image_size` px inputs: 32 up to SMALL_IMAGE px, 16 up to 320 px, then
    the largest power of two keeping a batch within MAX_BATCH_PIXELS (at least 1)."""
    if image_size <= SMALL_IMAGE:
        return 2 * BATCH
    fits = max(1, MAX_BATCH_PIXELS // (image_size * image_size))
    return min(BATCH, 1 << (fits.bit_length() - 1))


def decode_batch(paths: Sequence[Path | str], spec: dict) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """uint8 NCHW batch of `paths` as the eval transform sees them before scaling, and their original
    (width, height): 8-bit RGB (`load_rgb`) stretched with PIL's `Image.resize(..., BILINEAR)` to
    the spec's size (what `eval_transform_from_spec`'s Resize does to a PIL image), copied once
    per batch into NCHW. A source of already-decoded tensors (a decoded cache) replaces exactly this."""
    size = spec["image_size"]
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    sizes = []
    for i, path in enumerate(paths):
        image = load_rgb(str(path))
        sizes.append(image.size)
        pixels[i] = np.asarray(image if image.size == (size, size) else image.resize((size, size), Image.BILINEAR))
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), sizes


def normalize_batch(batch: torch.Tensor, spec: dict) -> torch.Tensor:
    """The eval transform's `scale` and `normalize` steps on a whole uint8 batch: the same
    elementwise operations as per image (`_scale`, `_normalize`), so the same floats."""
    return _normalize(spec)(_scale()(batch)).as_subclass(torch.Tensor)


def eval_batches(
    paths: Sequence[Path | str],
    spec: dict,
    batch_size: int,
    workers: int = 1,
    pin_memory: bool = False,
    decode: Callable[[Sequence[Path | str], dict], tuple[torch.Tensor, list[tuple[int, int]]]] = decode_batch,
) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Model-ready float batches of `paths`, in order, with the original image sizes.

    `workers` > 0 decodes and normalizes in that many threads (Pillow and torch release the GIL),
    up to `workers + 1` batches ahead of the consumer, so decoding overlaps the model's forward
    pass; memory stays bounded by that window whatever the number of paths. 0 decodes inline.
    `decode` is the one place pixels come from (`decode_batch`; a decoded cache can stand in).
    """
    paths = list(paths)
    chunks = (paths[start:start + batch_size] for start in range(0, len(paths), batch_size))

    def prepare(chunk):
        images, sizes = decode(chunk, spec)
        batch = normalize_batch(images, spec)
        return (batch.pin_memory() if pin_memory else batch), sizes

    if workers <= 0:
        for chunk in chunks:
            yield prepare(chunk)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode")
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(prepare, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def predict_batches(
    model: nn.Module,
    meta: dict,
    batches: Iterable[tuple[torch.Tensor, list[tuple[int, int]]]],
    device: str | torch.device = "cpu",
    score_threshold: float = 0.0,
) -> Iterator[list[dict]]:
    """The model on each batch of `eval_batches` (model already on `device`, eval mode): one list of
    results per batch, in order (the result format of `predict_images`)."""
    size = meta["preprocess"]["image_size"]
    names = meta["class_names"]
    classification = meta["task"] == "classification"
    non_blocking = str(device).startswith("cuda")
    with torch.inference_mode():
        for batch, original_sizes in batches:
            batch = batch.to(device, non_blocking=non_blocking)
            if classification:
                probs = torch.softmax(model(batch).float(), dim=1).cpu()
                labels = probs.argmax(dim=1).tolist()
                yield [{"probs": row, "label": label, "class_name": names[label]}
                       for row, label in zip(probs.tolist(), labels)]
                continue
            results = []
            for output, (width, height) in zip(model(list(batch)), original_sizes):
                keep = output["scores"] >= score_threshold
                scale = torch.tensor([width / size, height / size] * 2, device=output["boxes"].device)
                labels = (output["labels"][keep] - 1).tolist()
                results.append(
                    {
                        "boxes": (output["boxes"][keep] * scale).tolist(),
                        "scores": output["scores"][keep].tolist(),
                        "labels": labels,
                        "class_names": [names[label] for label in labels],
                    }
                )
            yield results


def predict_images(
    model: nn.Module,
    meta: dict,
    paths: Sequence[Path | str],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    score_threshold: float = 0.0,
    num_workers: int = 0,
) -> list[dict]:
    """One result per path, in order.

    Classification: `{"probs": [...], "label": int, "class_name": str}`. Detection: `{"boxes":
    [[x1, y1, x2, y2], ...] in pixels of the original image, "scores": [...], "labels": [...],
    "class_names": [...]}` with labels as class indices (background removed), sorted by score.
    `num_workers` > 0 decodes in that many threads, overlapping the model (`eval_batches`).
    """
    model = model.to(device).eval()
    batches = eval_batches(paths, meta["preprocess"], batch_size, num_workers,
                           pin_memory=str(device).startswith("cuda"))
    return [result for results in predict_batches(model, meta, batches, device, score_threshold)
            for result in results]


def predict_checkpoint(
    checkpoint: Path | str,
    paths: Sequence[Path | str],
    device: str = "cpu",
    memory_fraction: float | None = None,
    batch_size: int | None = None,
    on_progress=None,
    num_workers: int = 1,
) -> tuple[dict, list[dict]]:
    """Load a checkpoint once and predict `paths` in order: what an evaluation task runs.

    One pipeline for all of `paths`: the model stays loaded and the decode threads (`num_workers`,
    see `eval_batches`) keep decoding ahead across every batch. `batch_size` None sizes batches from
    the model's image size (`batch_size_for`). `memory_fraction` caps this process's CUDA memory, so
    several evaluations can share a GPU. `on_progress(done, total)` is called after every batch.
    """
    if str(device).startswith("cuda") and memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_fraction))
    model, meta = load_checkpoint(checkpoint, map_location=device)
    model = model.to(device).eval()
    spec = meta["preprocess"]
    batches = eval_batches(paths, spec, batch_size or batch_size_for(spec["image_size"]), num_workers,
                           pin_memory=str(device).startswith("cuda"))
    predictions: list[dict] = []
    for results in predict_batches(model, meta, batches, device):
        predictions += results
        if on_progress:
            on_progress(len(predictions), len(paths))
    return meta, predictions
