"""Run the exported TorchScript model on one image and print the prediction as JSON.

Requirements: numpy, Pillow, torch.
"""

import torch


def run_model(path, x, meta):
    """The model's outputs (numpy arrays: logits, or boxes, scores, labels) for the batch x."""
    module = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
