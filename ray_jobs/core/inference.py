"""Load a training checkpoint and predict, with exactly the preprocessing exported models document."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .catalog import build_model
from .data import eval_transform_from_spec, load_rgb
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


class _ImageFiles(torch.utils.data.Dataset):
    """Decode + eval transform per file, so a DataLoader can spread decoding over workers."""

    def __init__(self, paths: Sequence[Path | str], spec: dict):
        self.paths, self.spec = list(paths), spec
        self.transform = eval_transform_from_spec(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_rgb(str(self.paths[index]))
        return self.transform(image).as_subclass(torch.Tensor), image.size


def _collate(batch):
    images, sizes = zip(*batch)
    return list(images), list(sizes)


@torch.inference_mode()
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
    `num_workers` > 0 decodes in DataLoader worker processes (what keeps a GPU busy).
    """
    model = model.to(device).eval()
    size = meta["preprocess"]["image_size"]
    names = meta["class_names"]
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, meta["preprocess"]), batch_size=batch_size, num_workers=num_workers,
        collate_fn=_collate, pin_memory=str(device).startswith("cuda"),
    )
    results: list[dict] = []
    for images, original_sizes in loader:
        images = [image.to(device, non_blocking=True) for image in images]
        if meta["task"] == "classification":
            probs = torch.softmax(model(torch.stack(images)).float(), dim=1).cpu()
            for row in probs:
                label = int(row.argmax())
                results.append({"probs": row.tolist(), "label": label, "class_name": names[label]})
            continue
        for output, (width, height) in zip(model(images), original_sizes):
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
    return results


def predict_checkpoint(
    checkpoint: Path | str,
    paths: Sequence[Path | str],
    device: str = "cpu",
    memory_fraction: float | None = None,
    batch_size: int = 16,
    on_progress=None,
    num_workers: int = 0,
) -> tuple[dict, list[dict]]:
    """Load a checkpoint and predict `paths` in order: what an evaluation task runs.

    `memory_fraction` caps this process's CUDA memory, so several evaluations can share a GPU.
    Progress is reported per chunk of `batch_size * 8` images.
    """
    if str(device).startswith("cuda") and memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_fraction))
    model, meta = load_checkpoint(checkpoint, map_location=device)
    predictions: list[dict] = []
    chunk = batch_size * 8
    for start in range(0, len(paths), chunk):
        predictions += predict_images(model, meta, paths[start : start + chunk], batch_size, device,
                                      num_workers=num_workers)
        if on_progress:
            on_progress(len(predictions), len(paths))
    return meta, predictions
