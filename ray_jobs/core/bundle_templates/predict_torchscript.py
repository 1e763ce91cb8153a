#!/usr/bin/env python3
"""Run the exported TorchScript model on one image and print the prediction as JSON.

Requirements: numpy, Pillow, torch (and torchvision for a detection model).
Usage: python predict.py IMAGE [--top-k 5] [--score-threshold 0.25]
"""

import argparse
import json
import pathlib

import numpy as np
import torch
from PIL import Image

try:  # registers torchvision's operators (NMS, box IoU), which a detection model's graph calls
    import torchvision
except ImportError:  # a classifier needs torch only
    torchvision = None

HERE = pathlib.Path(__file__).resolve().parent


def load(name):
    return json.loads((HERE / name).read_text())


def preprocess(path, spec):
    """Same steps as the appliance: RGB, bilinear stretch to image_size, scale, mean/std, NCHW."""
    img = Image.open(path).convert("RGB")
    orig_w, orig_h = img.size
    size = spec["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * float(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    if spec.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32), (orig_w / w, orig_h / h)


def classification(outputs, labels, top_k):
    logits = outputs[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:top_k]
    top = [{"label": labels[i], "index": int(i), "score": float(probs[i])} for i in order]
    return {**top[0], "top": top}


def detection(outputs, labels, scale, score_threshold):
    boxes, scores, classes = (np.asarray(o) for o in outputs[:3])
    keep = scores >= score_threshold
    boxes = boxes[keep] * np.array([scale[0], scale[1], scale[0], scale[1]], dtype=np.float32)
    classes = classes[keep].astype(int)
    return {
        "boxes": [[round(float(v), 2) for v in b] for b in boxes],
        "labels": classes.tolist(),
        "label_names": [labels[c] for c in classes],
        "scores": [float(s) for s in scores[keep]],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--score-threshold", type=float, default=None)
    args = parser.parse_args()

    labels, spec, meta = load("labels.json"), load("preprocess.json"), load("export.json")
    if meta["task"] == "detection" and torchvision is None:
        raise SystemExit("This detection model calls torchvision's operators: pip install torchvision")
    module = torch.jit.load(str(HERE / meta["model_file"]), map_location="cpu").eval()
    x, scale = preprocess(args.image, spec)
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    outputs = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    if meta["task"] == "classification":
        result = classification(outputs, labels, args.top_k)
    else:
        threshold = args.score_threshold if args.score_threshold is not None else meta.get("score_threshold", 0.25)
        result = detection(outputs, labels, scale, threshold)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
