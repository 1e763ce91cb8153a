"""Run the exported ONNX model on one image and print the prediction as JSON.

Requirements: numpy, Pillow, onnxruntime.
"""

import onnxruntime as ort


def run_model(path, x, meta):
    """The model's outputs (numpy arrays, in the file's output order) for the batch x."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})
