"""The one preprocessing and post-processing of a prediction, shared by every place that predicts
with an exported model: the bundle's `predict.py` (this file ships in the bundle, verbatim, as
`aistudio_prediction.py`), the live endpoints (`ray_jobs/serving.py`) and the export's parity checks
(`ray_jobs/core/export/common.preprocess_image`). So the bundle and an endpoint see the same tensor
and give the same label and score.

Only the standard library, numpy and Pillow: the bundle runs where nothing of AI Studio is installed.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class NotAnImage(ValueError):
    """The input is not an image Pillow can decode."""


def open_image(source) -> Image.Image:
    """A path, raw bytes or a PIL image -> an RGB PIL image (decoded); NotAnImage when it is none."""
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            if isinstance(source, (str, pathlib.Path)) and not pathlib.Path(source).exists():
                raise NotAnImage(f"{source}: no such file") from None
            raise NotAnImage(f"not a readable image ({type(exc).__name__})") from None
    return img.convert("RGB")


def image_hw(spec: dict) -> tuple[int, int]:
    size = spec["image_size"]
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def preprocess(image, spec: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Image (path, bytes or PIL) -> ((1, 3, H, W) float32, original (width, height)).

    RGB, bilinear stretch to `image_size`, scale, mean/std, optional BGR, NCHW — as the model was trained.
    """
    img = open_image(image)
    size = img.size
    h, w = image_hw(spec)
    img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * float(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    if spec.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32), size


def classification(logits, labels, top_k: int = 5) -> dict:
    """One image's logits -> {"label", "index", "score", "top": [{"label", "index", "score"}, ...]}."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:max(1, top_k)]
    top = [{"label": labels[i], "index": int(i), "score": float(probs[i])} for i in order]
    return {**top[0], "top": top}


def detection(outputs, labels, size: tuple[int, int], spec: dict, score_threshold: float) -> dict:
    """One image's (boxes, scores, classes) in input-tensor pixels -> boxes in the original image's pixels."""
    boxes, scores, classes = (np.asarray(o) for o in outputs[:3])
    h, w = image_hw(spec)
    sx, sy = size[0] / w, size[1] / h
    keep = scores >= score_threshold
    boxes = boxes.reshape(-1, 4)[keep] * np.array([sx, sy, sx, sy], dtype=np.float32)
    classes = classes[keep].astype(int)
    return {
        "boxes": [[round(float(v), 2) for v in b] for b in boxes],
        "labels": classes.tolist(),
        "label_names": [labels[c] for c in classes],
        "scores": [float(s) for s in scores[keep]],
    }


def image_paths(args) -> list[pathlib.Path]:
    """Files as given, folders expanded to their images (sorted, not recursive)."""
    found = []
    for arg in args:
        path = pathlib.Path(arg)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found
