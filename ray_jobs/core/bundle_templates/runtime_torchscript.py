"""Run the exported TorchScript model on one image and print the prediction as JSON.

Requirements: numpy, Pillow, torch (and torchvision for a detection model).
"""

import functools

import torch

try:  # registers torchvision's operators (NMS, box IoU), which a detection model's graph calls
    import torchvision
except ImportError:  # a classifier needs torch only
    torchvision = None


@functools.lru_cache(maxsize=1)
def _module(path):
    return torch.jit.load(path, map_location="cpu").eval()


def run_model(path, x, meta):
    """The model's outputs (numpy arrays: logits, or boxes, scores, labels) for the batch x."""
    if meta["task"] == "detection" and torchvision is None:
        raise SystemExit("This detection model calls torchvision's operators: pip install torchvision")
    module = _module(str(path))
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
