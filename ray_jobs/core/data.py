"""Samples, transforms and the Lightning data module.

Samples are plain dicts so they travel through JSON and Ray unchanged:
classification `{"path": str, "label": int}`; detection `{"path": str, "boxes": [[x1, y1, x2, y2],
...], "labels": [int, ...]}` with boxes in pixels of the image as stored (EXIF orientation is
not applied). Labels are class indices into the run's `class_names`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

AUGMENTATIONS = ("hflip", "vflip", "color_jitter", "random_resized_crop", "rotate")


def validate_augmentations(names: Sequence[str]) -> list[str]:
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"Unknown augmentation(s) {', '.join(map(repr, unknown))}. "
            f"Valid augmentations: {', '.join(AUGMENTATIONS)}."
        )
    return list(names)


def preprocess_spec(task: str, image_size: int) -> dict:
    """Eval preprocessing of an exported model, exactly as `eval_transform` applies it.

    Steps in `order`: decode to 8-bit RGB and stretch it to image_size x image_size with
    PIL's `Image.resize(..., Image.BILINEAR)` (antialiased); multiply by `scale`; subtract `mean`
    and divide by `std` per channel. Detection uses mean 0 / std 1 because torchvision detection
    models normalize inside the network.
    """
    detection = task == "detection"
    return {
        "image_size": image_size,
        "resize": "stretch",
        "interpolation": "bilinear",
        "antialias": True,
        "mean": [0.0, 0.0, 0.0] if detection else IMAGENET_MEAN,
        "std": [1.0, 1.0, 1.0] if detection else IMAGENET_STD,
        "scale": 1 / 255,
        "channel_order": "RGB",
        "layout": "NCHW",
        "order": ["resize", "scale", "normalize"],
    }


def _resize(spec: dict) -> v2.Transform:
    size = spec["image_size"]
    return v2.Resize((size, size), interpolation=InterpolationMode.BILINEAR, antialias=spec["antialias"])


def _scale() -> v2.Transform:
    # ToDtype(scale=True) divides uint8 by 255, which is spec["scale"].
    return v2.ToDtype(torch.float32, scale=True)


def _normalize(spec: dict) -> v2.Transform:
    return v2.Normalize(spec["mean"], spec["std"])


def eval_transform_from_spec(spec: dict) -> v2.Compose:
    """Expects a PIL image: v2 then resizes with PIL itself, exactly as the spec says."""
    return v2.Compose([_resize(spec), v2.ToImage(), _scale(), _normalize(spec)])


def eval_transform(task: str, image_size: int) -> v2.Compose:
    return eval_transform_from_spec(preprocess_spec(task, image_size))


def train_transform(task: str, image_size: int, augmentations: Sequence[str]) -> v2.Compose:
    """The named augmentations around the same resize and normalization as eval (PIL input).

    v2 moves boxes along with pixels.
    """
    augmentations = validate_augmentations(augmentations)
    spec = preprocess_spec(task, image_size)
    size = (image_size, image_size)
    if "random_resized_crop" in augmentations:
        steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(0.5, 1.0))]
    else:
        steps = [_resize(spec)]
    optional = {
        "hflip": v2.RandomHorizontalFlip(),
        "vflip": v2.RandomVerticalFlip(),
        "rotate": v2.RandomRotation(15),
        "color_jitter": v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
    }
    steps += [transform for name, transform in optional.items() if name in augmentations]
    return v2.Compose([*steps, v2.ToImage(), _scale(), _normalize(spec)])


# The AISTUDIO_MAX_IMAGE_PIXELS setting (its default until `set_max_image_pixels`): no image with
# more pixels is decoded. Imports already skip them; this guards datasets imported before that and
# uploads to "try one image".
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
_max_pixels = DEFAULT_MAX_IMAGE_PIXELS
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def set_max_image_pixels(max_pixels: int | None) -> None:
    """Apply the appliance's pixel limit in this process (and to Pillow's own guard)."""
    global _max_pixels
    if max_pixels:
        _max_pixels = int(max_pixels)
        Image.MAX_IMAGE_PIXELS = _max_pixels


def load_rgb(path: str) -> Image.Image:
    """8-bit RGB, as every model here reads images. 16-bit greyscale is scaled to 8 bits (65535 ->
    255) the way the import stores it: `convert("RGB")` alone would clip it to white."""
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as exc:  # Pillow's guard, at twice the limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, int(found.group(1)) if found else 0) from None
    with image:
        width, height = image.size
        if width * height > _max_pixels:
            raise _too_large(path, width * height, f"{width}x{height} = ")
        if image.mode in _SIXTEEN_BIT:
            return image.convert("I").point(lambda v: v / 256).convert("L").convert("RGB")
        return image.convert("RGB")


def _too_large(path: str, pixels: int, shape: str = "") -> ValueError:
    return ValueError(f"{Path(path).name}: too large: {shape}{pixels:,} pixels, over the limit of "
                      f"{_max_pixels:,} (AISTUDIO_MAX_IMAGE_PIXELS)")


class ClassificationDataset(Dataset):
    def __init__(self, samples: Sequence[dict], transform: Callable):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = self.transform(load_rgb(sample["path"]))
        return image.as_subclass(torch.Tensor), int(sample["label"])


def detection_target(sample: dict, canvas_size: tuple[int, int]) -> dict[str, Any]:
    """A torchvision detection target; labels shift by one because 0 is background."""
    boxes = torch.tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas_size),
        "labels": torch.tensor(sample["labels"], dtype=torch.int64) + 1,
    }


class DetectionDataset(Dataset):
    def __init__(self, samples: Sequence[dict], transform: Callable):
        self.samples = list(samples)
        self.transform = transform
        # Boxes pushed off the image by crops/rotations, or degenerate in the labels, would
        # make torchvision's detection losses fail.
        self.clean_boxes = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        image = load_rgb(sample["path"])
        target = detection_target(sample, canvas_size=(image.height, image.width))
        image, target = self.clean_boxes(*self.transform(image, target))
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
        }


def detection_collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """torchvision detection models take lists: images and targets may differ per item."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def class_weights_from_samples(samples: Sequence[dict], num_classes: int) -> list[float]:
    """Inverse-frequency weights, total / (num_classes * count), so every class weighs the same."""
    counts = [0] * num_classes
    for sample in samples:
        counts[int(sample["label"])] += 1
    total = sum(counts)
    return [total / (num_classes * count) if count else 0.0 for count in counts]


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        task: str,
        train_samples: Sequence[dict],
        val_samples: Sequence[dict],
        image_size: int,
        batch_size: int,
        augmentations: Sequence[str] = (),
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if task not in ("classification", "detection"):
            raise ValueError(f"Unknown task '{task}'. Valid tasks: classification, detection.")
        if not train_samples or not val_samples:
            raise ValueError("Training needs at least one training and one validation sample.")
        self.task = task
        self.train_samples = list(train_samples)
        self.val_samples = list(val_samples)
        self.image_size = image_size
        self.batch_size = batch_size
        self.augmentations = validate_augmentations(augmentations)
        self.num_workers = num_workers
        self.seed = seed

    def _dataset(self, samples: list[dict], transform: Callable) -> Dataset:
        cls = DetectionDataset if self.task == "detection" else ClassificationDataset
        return cls(samples, transform)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            # A final batch of one breaks BatchNorm in training mode.
            drop_last=train and len(dataset) > 1 and len(dataset) % self.batch_size == 1,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=detection_collate if self.task == "detection" else None,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        transform = train_transform(self.task, self.image_size, self.augmentations)
        return self._loader(self._dataset(self.train_samples, transform), train=True)

    def val_dataloader(self) -> DataLoader:
        transform = eval_transform(self.task, self.image_size)
        return self._loader(self._dataset(self.val_samples, transform), train=False)
