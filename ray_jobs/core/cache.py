"""Decoded-image cache (issue #14, item 4): each image decoded and resized once, then read as uint8.

A cache holds one list of samples (a run's train or val subset, an evaluation's images) at one square
side, as two memory-mapped NumPy files in a folder (the experiment's `cache/`, see
`appliance.store.paths.Workspace.decoded_cache_dir`):

    <role>-<task>-<side>-<key>.npy        uint8 (N, side, side, 3): RGB, stretched to side x side with
                                          PIL bilinear (antialiased) -- the eval resize of `preprocess_spec`
    <role>-<task>-<side>-<key>.sizes.npy  int64 (N, 2): each decoded image's (width, height), to scale boxes

`key` hashes the format version, the task, the side and every sample's content fingerprint (its
`sha256` from the Image row; a file's path, size and mtime when a sample has none), in order: a
changed image, size, task or sample list is a new file, never a stale read.

Safety: a cache is written under a unique temporary name and renamed into place (sizes first, pixels
last), so a reader never opens half a cache; a cache whose files do not have the exact expected
length (truncated, say) is deleted and rebuilt. Two processes building the same key each write their
own temporary file; the last rename wins and both results are identical. After a build, older caches
of the same role in the folder are removed, so an experiment holds at most one cache per role
(`train`, `val`, ...): its disk use is N x side^2 x 3 bytes per role -- 224 px: 150 KB an image, 15 GB for
100k images; with `random_resized_crop` the train cache is sqrt(2) larger a side (2x the bytes). A
cache larger than `max_bytes` is not built (the caller decodes every epoch, as without the cache).

For other jobs (evaluation): `eval_images(samples, task, image_size, folder)` returns a
`DecodedImages` whose `eval_tensor(i)` equals `eval_transform(task, image_size)(load_rgb(path))`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from .data import eval_transform, load_rgb

FORMAT_VERSION = 1
CROP_MARGIN = math.sqrt(2)  # RandomResizedCrop(scale=(0.5, 1)) keeps >= 1/sqrt(2) of a side
DEFAULT_MAX_BYTES = 32 * 1024**3


def cache_side(image_size: int, augmentations: Sequence[str] = ()) -> int:
    """The side a cache is stored at: the image size, or sqrt(2) more when training crops (so a
    crop of half the area is still resized down, never up)."""
    return math.ceil(image_size * CROP_MARGIN) if "random_resized_crop" in augmentations else image_size


def fingerprint(sample: dict) -> str:
    if sample.get("sha256"):
        return str(sample["sha256"])
    stat = os.stat(sample["path"])
    return f"{sample['path']}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(samples: Sequence[dict], task: str, side: int) -> str:
    digest = hashlib.sha256(f"aistudio-decoded-v{FORMAT_VERSION}|{task}|{side}\n".encode())
    for sample in samples:
        digest.update(fingerprint(sample).encode() + b"\n")
    return digest.hexdigest()[:32]


def decode_resized(path: str, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The eval resize of `preprocess_spec`: decode to 8-bit RGB, stretch with PIL bilinear."""
    image = load_rgb(path)
    size = image.size
    return np.asarray(image.resize((side, side), Image.BILINEAR), dtype=np.uint8), size


def _as_is(item):
    return item


class _Decode(Dataset):
    def __init__(self, paths: list[str], side: int):
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        pixels, size = decode_resized(self.paths[index], self.side)
        return index, pixels, size


class DecodedImages:
    """An opened cache: `pixels` (N, side, side, 3) uint8 memory-mapped, `sizes` (N, 2) (width, height)."""

    def __init__(self, path: Path, pixels: np.ndarray, sizes: np.ndarray, task: str):
        self.path, self.pixels, self.sizes, self.task = path, pixels, sizes, task
        self._eval: Callable | None = None

    @property
    def side(self) -> int:
        return int(self.pixels.shape[1])

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def image(self, index: int) -> torch.Tensor:
        """uint8 CHW tensor, contiguous (a copy: the map stays read-only). A permuted HWC view would
        keep channels-last strides through the transforms into the batch, which made a CPU epoch
        ~1.7x slower here."""
        return torch.from_numpy(np.ascontiguousarray(self.pixels[index].transpose(2, 0, 1)))

    def eval_tensor(self, index: int) -> torch.Tensor:
        """The float CHW tensor `eval_transform(task, side)` gives for this image's file today."""
        if self._eval is None:
            self._eval = eval_transform(self.task, self.side, resized=True)
        return self._eval(tv_tensors.Image(self.image(index))).as_subclass(torch.Tensor)

    def __getstate__(self) -> dict:
        # Pickled (a spawned DataLoader worker, a Ray task): the map is reopened, not copied.
        return {"path": self.path, "sizes": self.sizes, "task": self.task}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], np.load(state["path"], mmap_mode="r"), state["sizes"], state["task"])


def _paths(folder: Path, role: str, task: str, side: int, key: str) -> tuple[Path, Path]:
    stem = f"{role}-{task}-{side}-{key}"
    return folder / f"{stem}.npy", folder / f"{stem}.sizes.npy"


def _open(pixels_path: Path, sizes_path: Path, count: int, side: int, task: str) -> DecodedImages | None:
    """The cache when both files are complete and of the expected shape; None otherwise."""
    if not pixels_path.is_file() or not sizes_path.is_file():
        return None
    try:
        pixels = np.load(pixels_path, mmap_mode="r")
        sizes = np.load(sizes_path)
        header = pixels.offset
        complete = (pixels.shape == (count, side, side, 3) and pixels.dtype == np.uint8
                    and sizes.shape == (count, 2)
                    and pixels_path.stat().st_size == header + count * side * side * 3)
    except (OSError, ValueError, EOFError):
        return None
    return DecodedImages(pixels_path, pixels, sizes, task) if complete else None


STALE_TMP_S = 3600  # a temporary file untouched this long was left by a killed build


def _remove_others(folder: Path, role: str, keep: Path) -> None:
    """Older caches of `role`, and temporary files of builds that died (kill -9) long ago."""
    keep_names = {keep.name, keep.name[:-len(".npy")] + ".sizes.npy"}
    for path in folder.glob(f"{role}-*.npy"):
        if path.name not in keep_names:
            path.unlink(missing_ok=True)
    now = time.time()
    for path in folder.glob("*.tmp-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_TMP_S:
                path.unlink()


def open_or_build(
    samples: Sequence[dict],
    task: str,
    side: int,
    folder: Path | str,
    role: str,
    workers: int = 0,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    log: Callable[[str], None] | None = None,
) -> DecodedImages | None:
    """The cache of `samples` at `side`, built now (decoding with `workers` DataLoader processes) if
    missing or unreadable. None when it would exceed `max_bytes` or the disk: decode as before."""
    folder = Path(folder)
    count = len(samples)
    key = cache_key(samples, task, side)
    pixels_path, sizes_path = _paths(folder, role, task, side, key)
    cached = _open(pixels_path, sizes_path, count, side, task)
    if cached is not None:
        return cached
    need = count * side * side * 3
    folder.mkdir(parents=True, exist_ok=True)
    if max_bytes is not None and need > max_bytes:
        if log:
            log(f"decoded cache off for {role}: {need / 1e9:.1f} GB over the limit of {max_bytes / 1e9:.1f} GB "
                "(AISTUDIO_DECODED_CACHE_MAX_BYTES)")
        return None
    free = os.statvfs(folder)
    if need + 1024**3 > free.f_bavail * free.f_frsize:
        if log:
            log(f"decoded cache off for {role}: {need / 1e9:.1f} GB does not fit on the disk")
        return None
    pixels_path.unlink(missing_ok=True)  # an unreadable one
    sizes_path.unlink(missing_ok=True)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_pixels = pixels_path.with_name(pixels_path.name + tag)
    tmp_sizes = sizes_path.with_name(sizes_path.name + tag)
    try:
        out = np.lib.format.open_memmap(tmp_pixels, mode="w+", dtype=np.uint8, shape=(count, side, side, 3))
        sizes = np.zeros((count, 2), dtype=np.int64)
        loader = DataLoader(_Decode([s["path"] for s in samples], side), batch_size=None, shuffle=False,
                            num_workers=workers, prefetch_factor=4 if workers else None, collate_fn=_as_is)
        for index, pixels, size in loader:
            out[index] = pixels
            sizes[index] = size
        out.flush()
        del out
        with open(tmp_sizes, "wb") as f:
            np.save(f, sizes)
        os.replace(tmp_sizes, sizes_path)
        os.replace(tmp_pixels, pixels_path)  # the commit: pixels appear complete or not at all
    finally:
        tmp_pixels.unlink(missing_ok=True)
        tmp_sizes.unlink(missing_ok=True)
    _remove_others(folder, role, pixels_path)
    if log:
        log(f"decoded cache for {role}: {count} images at {side} px, {need / 1e6:.0f} MB")
    return _open(pixels_path, sizes_path, count, side, task)


def eval_images(samples: Sequence[dict], task: str, image_size: int, folder: Path | str, role: str = "eval",
                workers: int = 0, max_bytes: int | None = DEFAULT_MAX_BYTES) -> DecodedImages | None:
    """For evaluation / prediction jobs: the cached images of `samples` at the eval size, built if
    needed; `result.eval_tensor(i)` is today's `eval_transform(task, image_size)` output for sample i
    (bit-exact: the same PIL resize, then the same float ops). None when over `max_bytes`."""
    return open_or_build(samples, task, image_size, folder, role, workers=workers, max_bytes=max_bytes)
