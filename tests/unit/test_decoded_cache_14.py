"""Issue #14 item 4: the decoded-image cache (ray_jobs/core/cache.py) and the data module reading it.

Pure, in-process: tiny generated images, no Ray. What the cache must guarantee: its eval tensors are
today's eval transform of the file (exported models and prediction use that preprocessing); later
epochs read it instead of decoding; a changed image, size or task is a new cache; a truncated or
half-written cache file is never read; detection boxes are scaled with the image.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_jobs.core import cache as cache_module
from ray_jobs.core import data as data_module
from ray_jobs.core.cache import cache_side, eval_images, open_or_build
from ray_jobs.core.data import ImageDataModule, eval_transform, load_rgb, loader_options
from tests.fixtures import class_image, save_image

SIZE = 24


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def images(tmp_path) -> list[dict]:
    """Six non-square images (JPEG, PNG, 16-bit greyscale PNG) as classification + detection samples."""
    rng = random.Random(3)
    samples = []
    for i in range(6):
        width, height = 40 + 7 * i, 30 + 5 * i
        path = tmp_path / f"im{i}.{'png' if i % 2 else 'jpg'}"
        if i == 5:
            Image.fromarray((np.arange(width * height, dtype=np.uint16).reshape(height, width) * 13)).save(path)
        else:
            save_image(class_image((200, 40 * i, 30), max(width, height), rng).resize((width, height)), path)
        samples.append({"path": str(path), "sha256": _sha(path), "label": i % 2,
                        "boxes": [[4.0, 3.0, width - 6.0, height - 5.0]], "labels": [i % 2]})
    return samples


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """Every image decode (the cache's and the data module's), by path."""
    seen: list[str] = []

    def counting(path: str):
        seen.append(path)
        return load_rgb(path)

    monkeypatch.setattr(cache_module, "load_rgb", counting)
    monkeypatch.setattr(data_module, "load_rgb", counting)
    return seen


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_cached_eval_tensors_equal_todays_eval_transform(images, tmp_path, task):
    cached = eval_images(images, task, SIZE, tmp_path / "cache")
    transform = eval_transform(task, SIZE)
    for i, sample in enumerate(images):
        expected = transform(load_rgb(sample["path"])).as_subclass(torch.Tensor)
        got = cached.eval_tensor(i)
        assert got.shape == expected.shape == (3, SIZE, SIZE)
        assert torch.allclose(got, expected, atol=1 / 255 / 0.225 * 0.5), (i, (got - expected).abs().max())
        with Image.open(sample["path"]) as im:
            assert tuple(int(v) for v in cached.sizes[i]) == im.size


def _module(samples, folder, task="classification", augmentations=("hflip",)) -> ImageDataModule:
    return ImageDataModule(task, samples[:4], samples[4:], image_size=SIZE, batch_size=2,
                           augmentations=augmentations, num_workers=0, cache_dir=folder,
                           cpus=1)  # cpus=1: the cache is built in this process, where `decodes` counts


def _epoch(module: ImageDataModule) -> None:
    for loader in (module.train_dataloader(), module.val_dataloader()):
        for _ in loader:
            pass


def test_second_epoch_reads_the_cache_and_a_second_run_too(images, tmp_path, decodes):
    folder = tmp_path / "cache"
    module = _module(images, folder)
    _epoch(module)
    assert sorted(decodes) == sorted(s["path"] for s in images)  # each image decoded once
    _epoch(module)
    _epoch(_module(images, folder))  # a later run with the same images and size
    assert len(decodes) == len(images)
    assert sorted(p.name.split("-")[0] for p in folder.glob("*.sizes.npy")) == ["train", "val"]


def test_without_cache_dir_every_epoch_decodes(images, tmp_path, decodes):
    module = ImageDataModule("classification", images[:4], images[4:], image_size=SIZE, batch_size=2, num_workers=0)
    _epoch(module)
    _epoch(module)
    assert len(decodes) == 2 * len(images)


def test_changed_image_size_or_task_is_a_new_cache(images, tmp_path, decodes):
    folder = tmp_path / "cache"
    first = open_or_build(images, "classification", SIZE, folder, "train")
    old = first.path
    # Re-import of different bytes under the same file name: a new sha256.
    path = Path(images[2]["path"])
    save_image(class_image((10, 250, 10), 50, random.Random(9)), path)
    changed = [dict(s) for s in images]
    changed[2]["sha256"] = _sha(path)
    second = open_or_build(changed, "classification", SIZE, folder, "train")
    assert second.path != old and not old.exists()  # the stale cache is gone
    expected = eval_transform("classification", SIZE)(load_rgb(str(path))).as_subclass(torch.Tensor)
    assert torch.allclose(second.eval_tensor(2), expected, atol=1e-6)
    assert open_or_build(changed, "classification", SIZE + 8, folder, "train").path != second.path
    assert open_or_build(changed, "detection", SIZE, folder, "train").path != second.path
    # Without a sha256 (a sample from outside the database) the file's size and mtime are the key.
    bare = [{k: v for k, v in s.items() if k != "sha256"} for s in changed]
    assert open_or_build(bare, "classification", SIZE, folder, "train").path != second.path


def test_truncated_cache_is_rebuilt_not_read(images, tmp_path, decodes):
    folder = tmp_path / "cache"
    built = open_or_build(images, "classification", SIZE, folder, "val")
    good = np.array(built.pixels)
    del built
    path = next(p for p in folder.glob("val-*.npy") if not p.name.endswith(".sizes.npy"))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    decodes.clear()
    again = open_or_build(images, "classification", SIZE, folder, "val")
    assert len(decodes) == len(images)  # rebuilt from the files
    assert np.array_equal(np.array(again.pixels), good)


def test_half_written_temporary_file_is_never_read(images, tmp_path, decodes):
    folder = tmp_path / "cache"
    key = cache_module.cache_key(images, "classification", SIZE)
    folder.mkdir()
    pixels, sizes = cache_module._paths(folder, "val", "classification", SIZE, key)
    # A build killed mid-write leaves only its temporary files (a full-length map of zeros).
    np.lib.format.open_memmap(pixels.with_name(pixels.name + ".tmp-1-dead"), mode="w+", dtype=np.uint8,
                              shape=(len(images), SIZE, SIZE, 3)).flush()
    np.save(sizes, np.zeros((len(images), 2), dtype=np.int64))
    built = open_or_build(images, "classification", SIZE, folder, "val")
    assert len(decodes) == len(images)
    assert built.pixels.any()


def test_detection_boxes_scale_with_the_image(images, tmp_path):
    plain = ImageDataModule("detection", images[:4], images[4:], image_size=SIZE, batch_size=2, num_workers=0)
    cached = ImageDataModule("detection", images[:4], images[4:], image_size=SIZE, batch_size=2, num_workers=0,
                             cache_dir=tmp_path / "cache")
    for (x1, t1), (x2, t2) in zip(plain.val_dataloader().dataset, cached.val_dataloader().dataset, strict=True):
        assert torch.allclose(x1, x2, atol=1e-6)
        assert torch.allclose(t1["boxes"], t2["boxes"], atol=1e-4)
        assert torch.equal(t1["labels"], t2["labels"])


def test_random_resized_crop_reads_a_larger_cache(images, tmp_path):
    folder = tmp_path / "cache"
    module = _module(images, folder, augmentations=("random_resized_crop", "hflip", "rotate", "color_jitter"))
    x, _ = next(iter(module.train_dataloader()))
    assert x.shape == (2, 3, SIZE, SIZE)
    side = cache_side(SIZE, ["random_resized_crop"])
    assert side > SIZE and list(folder.glob(f"train-classification-{side}-*.sizes.npy"))


def test_cache_over_the_limit_is_not_built(images, tmp_path, decodes):
    messages: list[str] = []
    assert open_or_build(images, "classification", SIZE, tmp_path / "c", "train", max_bytes=100,
                         log=messages.append) is None
    assert "AISTUDIO_DECODED_CACHE_MAX_BYTES" in messages[0] and not decodes


def test_loader_options_follow_the_host():
    cpu_cached = loader_options(cpus=2, cuda=False, cached=True)
    assert cpu_cached["num_workers"] == 0 and not cpu_cached["pin_memory"]
    assert loader_options(cpus=1, cuda=False)["num_workers"] == 0
    decoding = loader_options(cpus=16, cuda=False)
    assert decoding["num_workers"] == 4 and decoding["persistent_workers"]
    gpu = loader_options(cpus=16, cuda=True, cached=True)
    assert gpu == {"num_workers": 8, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}
