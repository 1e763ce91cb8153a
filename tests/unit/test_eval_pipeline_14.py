"""Issue #14 item 5 (evaluation inside Ray at bare-loop speed): the evaluation's batch pipeline.

`ray_jobs.core.inference` now predicts a task's images through one pipeline: the checkpoint loaded
once, batches sized from the model's image size, decoding in a thread a bounded number of batches
ahead of the model, scale + normalize on whole batches. These check that it changes nothing a user
sees: the model's inputs are bit for bit the eval transform's, predictions are the same in any
batch size, in order, a bad file still fails the run with its name; and the pipeline's shape (one
checkpoint load, progress per batch, a bounded decode window). No Ray, no server; a few seconds.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_jobs.core import inference
from ray_jobs.core.catalog import build_model
from ray_jobs.core.data import eval_transform_from_spec, load_rgb, preprocess_spec
from ray_jobs.core.module import TrainConfig

SIZE = 32
NAMES = ["red", "green", "blue"]


def _images(folder: Path, count: int) -> list[Path]:
    """Mixed sizes (smaller, larger, the model's own, not square), formats and modes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(14)
    shapes = [(40, 30), (SIZE, SIZE), (100, 37), (17, 90), (64, 48)]
    paths = []
    for i in range(count):
        w, h = shapes[i % len(shapes)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        kind = i % 4
        if kind == 1:
            image = image.convert("L")
        elif kind == 2:
            image = image.convert("P")
        elif kind == 3:
            image = Image.new("I;16", (w, h))  # 16-bit grey
            image.putdata((pixels[..., 0].astype(np.int64) * 257).ravel().tolist())
        path = folder / f"{i:03d}.{'jpg' if kind in (0, 1) else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """What an evaluation task on a CPU host runs with (and steady on a loaded CI box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return _images(tmp_path_factory.mktemp("eval14"), 40)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint as training writes it (the keys `load_checkpoint` reads), with random weights and
    BatchNorm statistics so the classes get clearly different scores."""
    torch.manual_seed(14)
    config = TrainConfig(model="mobilenet_v3_small", num_classes=len(NAMES), class_names=NAMES, image_size=SIZE,
                         pretrained=False)
    model = build_model("mobilenet_v3_small", len(NAMES), pretrained=False, image_size=SIZE)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt14") / "best.ckpt"
    torch.save({
        "hyper_parameters": {"config": config.to_dict(), "preprocess": preprocess_spec("classification", SIZE)},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "epoch": 0,
    }, path)
    return path


def test_batched_inputs_are_the_eval_transform_bit_for_bit(images):
    spec = preprocess_spec("classification", SIZE)
    transform = eval_transform_from_spec(spec)
    expected = torch.stack([transform(load_rgb(str(p))).as_subclass(torch.Tensor) for p in images])
    pixels, sizes = inference.decode_batch(images, spec)
    assert pixels.dtype == torch.uint8 and pixels.is_contiguous()
    batch = inference.normalize_batch(pixels, spec)
    assert type(batch) is torch.Tensor and batch.is_contiguous()
    assert torch.equal(batch, expected)
    assert sizes == [Image.open(p).size for p in images]
    detection = preprocess_spec("detection", SIZE)  # mean 0 / std 1
    assert torch.equal(inference.normalize_batch(inference.decode_batch(images[:5], detection)[0], detection),
                       torch.stack([eval_transform_from_spec(detection)(load_rgb(str(p))) for p in images[:5]]))


def test_predictions_do_not_depend_on_batch_size_or_decode_threads(images, checkpoint):
    model, meta = inference.load_checkpoint(checkpoint)
    reference = inference.predict_images(model, meta, images, batch_size=16, num_workers=0)
    for batch_size, workers in ((7, 2), (len(images), 1)):
        got = inference.predict_images(model, meta, images, batch_size=batch_size, num_workers=workers)
        assert got == reference, (batch_size, workers)  # same order, same floats
    one_by_one = [inference.predict_images(model, meta, [p], batch_size=1)[0] for p in images[:12]]
    probs = np.array([r["probs"] for r in reference[:12]])
    assert np.abs(probs - np.array([r["probs"] for r in one_by_one])).max() < 1e-5
    margin = np.sort(probs, axis=1)[:, -1] - np.sort(probs, axis=1)[:, -2]
    clear = margin > 1e-4  # a batch of one may differ in the last float bits
    assert clear.sum() > 6
    assert [r["label"] for r, c in zip(one_by_one, clear) if c] == [r["label"] for r, c in zip(reference, clear) if c]
    for r in reference:
        assert r["label"] == int(np.argmax(r["probs"])) and r["class_name"] == NAMES[r["label"]]


def test_checkpoint_loaded_once_and_progress_after_every_batch(images, checkpoint, monkeypatch):
    loads = []
    real_load = inference.load_checkpoint
    monkeypatch.setattr(inference, "load_checkpoint", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    progress = []
    meta, predictions = inference.predict_checkpoint(checkpoint, images, on_progress=lambda d, t: progress.append((d, t)))
    assert len(loads) == 1 and meta["class_names"] == NAMES
    batch = inference.batch_size_for(SIZE)
    assert batch == 32
    assert progress == [(32, 40), (40, 40)]
    model, _ = real_load(checkpoint)
    assert predictions == inference.predict_images(model, meta, images, batch_size=16)


def test_batch_size_follows_image_size():
    assert [inference.batch_size_for(s) for s in (32, 64, 96, 128, 224, 320, 448, 640, 1280, 4000)] == \
        [32, 32, 16, 16, 16, 16, 8, 4, 1, 1]


def test_decoding_runs_at_most_a_bounded_window_ahead(images):
    """Memory stays flat in the number of images: when the model gets batch k, at most
    k + 1 + workers batches have been decoded, whatever the threads' timing."""
    spec = preprocess_spec("classification", SIZE)
    decoded = []
    lock = threading.Lock()

    def counting_decode(paths, spec):
        out = inference.decode_batch(paths, spec)
        with lock:
            decoded.append(len(paths))
        return out

    for workers in (1, 3):
        decoded.clear()
        seen = []
        for k, (batch, sizes) in enumerate(inference.eval_batches(images, spec, 4, workers, decode=counting_decode)):
            with lock:
                assert len(decoded) <= k + 1 + workers, (workers, k, len(decoded))
            seen.append(len(sizes))
        assert sum(seen) == len(images) and len(seen) == 10


def test_a_bad_file_fails_with_its_name_and_leaves_no_decode_thread(images, checkpoint, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="bad.jpg"):
        inference.predict_checkpoint(checkpoint, [*images[:36], bad, *images[36:]], num_workers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("eval-decode")]
