"""Run the exported ONNX model on one image and print the prediction as JSON.

Requirements: numpy, Pillow, onnxruntime.
"""

import functools

import onnxruntime as ort


@functools.lru_cache(maxsize=1)
def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run_model(path, x, meta):
    """The model's outputs (numpy arrays, in the file's output order) for the batch x."""
    session = _session(str(path))
    return session.run(None, {session.get_inputs()[0].name: x})
