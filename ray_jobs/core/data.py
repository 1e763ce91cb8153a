"""Samples, transforms and the Lightning data module.

Samples are plain dicts so they travel through JSON and Ray unchanged:
classification `{"path": str, "label": int}`; detection `{"path": str, "boxes": [[x1, y1, x2, y2],
...], "labels": [int, ...]}` with boxes in pixels of the image as stored (EXIF orientation is
not applied). Labels are class indices into the run's `class_names`.
"""

from __future__ import annotations

import os
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


def eval_transform_from_spec(spec: dict, resized: bool = False) -> v2.Compose:
    """Expects a PIL image: v2 then resizes with PIL itself, exactly as the spec says. `resized`:
    the input is already the resized uint8 image (a decoded cache's), only scaled and normalized."""
    return v2.Compose([*([] if resized else [_resize(spec)]), v2.ToImage(), _scale(), _normalize(spec)])


def eval_transform(task: str, image_size: int, resized: bool = False) -> v2.Compose:
    return eval_transform_from_spec(preprocess_spec(task, image_size), resized)


def train_transform(task: str, image_size: int, augmentations: Sequence[str], resized: bool = False) -> v2.Compose:
    """The named augmentations around the same resize and normalization as eval (PIL input).

    v2 moves boxes along with pixels. `resized`: the input is a decoded cache's uint8 image, already
    stretched to image_size (or to `cache.cache_side`, which random_resized_crop crops from).
    """
    augmentations = validate_augmentations(augmentations)
    spec = preprocess_spec(task, image_size)
    size = (image_size, image_size)
    if "random_resized_crop" in augmentations:
        steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(0.5, 1.0))]
    else:
        steps = [] if resized else [_resize(spec)]
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
    """Decodes each image from its file every time (`images=None`), or reads it from a decoded cache
    (`images`: a `cache.DecodedImages` of the same samples; `transform` then takes its uint8 tensors)."""

    def __init__(self, samples: Sequence[dict], transform: Callable, images: Any = None):
        self.samples = list(samples)
        self.transform = transform
        self.images = images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        source = load_rgb(sample["path"]) if self.images is None else tv_tensors.Image(self.images.image(index))
        image = self.transform(source)
        return image.as_subclass(torch.Tensor), int(sample["label"])


def detection_target(sample: dict, canvas_size: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """A torchvision detection target; labels shift by one because 0 is background. `scale` (x, y)
    maps the stored image's pixels to the canvas (a decoded cache's resized image)."""
    boxes = torch.tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4)
    if scale != (1.0, 1.0):
        boxes = boxes * torch.tensor([scale[0], scale[1], scale[0], scale[1]])
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas_size),
        "labels": torch.tensor(sample["labels"], dtype=torch.int64) + 1,
    }


class DetectionDataset(Dataset):
    """As `ClassificationDataset`; with a decoded cache the boxes are scaled with the image."""

    def __init__(self, samples: Sequence[dict], transform: Callable, images: Any = None):
        self.samples = list(samples)
        self.transform = transform
        self.images = images
        # Boxes pushed off the image by crops/rotations, or degenerate in the labels, would
        # make torchvision's detection losses fail.
        self.clean_boxes = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        if self.images is None:
            image = load_rgb(sample["path"])
            target = detection_target(sample, canvas_size=(image.height, image.width))
        else:
            image = tv_tensors.Image(self.images.image(index))
            side = self.images.side
            width, height = (int(v) for v in self.images.sizes[index])
            target = detection_target(sample, (side, side), (side / width, side / height))
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


def host_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_options(cpus: int | None = None, cuda: bool = False, cached: bool = False) -> dict:
    """DataLoader settings for this host: `cpus` (those given to the Ray worker; default: this
    process's), CUDA or not, images from a decoded cache or decoded from files.

    On CUDA, worker processes (up to 8, one CPU left for the training loop) keep the GPU fed, with
    pinned memory and a deeper prefetch. On the CPU, training itself needs the cores: a cached epoch
    reads in the loop (a worker would only add a copy between processes), decoding gets up to 4 workers
    but always leaves one CPU to the model.
    """
    cpus = max(1, int(cpus or host_cpus()))
    if cuda:
        workers = min(cpus - 1, 8)
    else:
        workers = 0 if cached else min(cpus - 1, 4)
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}
    if workers:
        options["prefetch_factor"] = 4 if cuda else 2
    return options


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        task: str,
        train_samples: Sequence[dict],
        val_samples: Sequence[dict],
        image_size: int,
        batch_size: int,
        augmentations: Sequence[str] = (),
        num_workers: int | None = 0,
        seed: int = 0,
        cache_dir: Path | str | None = None,
        cache_max_bytes: int | None = None,
        cpus: int | None = None,
        log: Callable[[str], None] | None = None,
    ):
        """`num_workers=None`: chosen by `loader_options` from `cpus` and the device. `cache_dir`: read
        images from a decoded cache there (`cache.open_or_build`, at most `cache_max_bytes` a subset),
        built on first use; None decodes every image every epoch."""
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
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_max_bytes = cache_max_bytes
        self.cpus = cpus
        self.log = log

    def _cuda(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _images(self, role: str, samples: list[dict], side: int):
        """The decoded cache of `samples` (built now if needed), or None without one."""
        if self.cache_dir is None:
            return None
        from .cache import open_or_build  # cache imports this module

        workers = loader_options(self.cpus, self._cuda(), cached=False)["num_workers"]
        return open_or_build(samples, self.task, side, self.cache_dir, role, workers=workers,
                             max_bytes=self.cache_max_bytes, log=self.log)

    def _dataset(self, samples: list[dict], transform: Callable, images: Any = None) -> Dataset:
        cls = DetectionDataset if self.task == "detection" else ClassificationDataset
        return cls(samples, transform, images)

    def _loader(self, dataset: Dataset, train: bool, cached: bool) -> DataLoader:
        options = loader_options(self.cpus, self._cuda(), cached)
        if self.num_workers is not None:  # chosen by the caller
            options.update(num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
            options.pop("prefetch_factor", None)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            # A final batch of one breaks BatchNorm in training mode.
            drop_last=train and len(dataset) > 1 and len(dataset) % self.batch_size == 1,
            collate_fn=detection_collate if self.task == "detection" else None,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        from .cache import cache_side

        images = self._images("train", self.train_samples, cache_side(self.image_size, self.augmentations))
        transform = train_transform(self.task, self.image_size, self.augmentations, resized=images is not None)
        return self._loader(self._dataset(self.train_samples, transform, images), train=True, cached=images is not None)

    def val_dataloader(self) -> DataLoader:
        images = self._images("val", self.val_samples, self.image_size)
        transform = eval_transform(self.task, self.image_size, resized=images is not None)
        return self._loader(self._dataset(self.val_samples, transform, images), train=False, cached=images is not None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """channels_last on CUDA (classification batches; detection takes lists of images)."""
        if self.task == "classification" and isinstance(batch[0], torch.Tensor) and batch[0].is_cuda:
            return batch[0].contiguous(memory_format=torch.channels_last), batch[1]
        return batch
