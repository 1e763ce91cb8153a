#!/usr/bin/env python3
"""Run the exported TensorRT engine on one image and print the prediction as JSON.

Requirements: numpy, Pillow, torch (CUDA, for GPU buffers), tensorrt -- the same
TensorRT version and GPU model as recorded in engine.json (engines only load where they were built).
Usage: python predict.py IMAGE [--top-k 5] [--score-threshold 0.25]
"""

import argparse
import json
import pathlib

import numpy as np
import tensorrt as trt
import torch
from PIL import Image

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


class _Allocator(trt.IOutputAllocator):
    """Memory for outputs whose size TensorRT learns while running (detections after NMS)."""

    def __init__(self):
        trt.IOutputAllocator.__init__(self)
        self.buffers, self.shapes = {}, {}

    def reallocate_output_async(self, name, memory, size, alignment, stream):
        self.buffers[name] = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
        return self.buffers[name].data_ptr()

    def notify_shape(self, name, shape):
        self.shapes[name] = tuple(shape)


TORCH_DTYPES = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}


def run_engine(path, x, output_names=None):
    """Execute the engine with torch CUDA tensors as buffers (execute_async_v3)."""
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(pathlib.Path(path).read_bytes())
    if engine is None:
        raise SystemExit("could not load the engine: it only loads with the TensorRT version and GPU in engine.json")
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    outs = [n for n in names if n != inp]
    xt = torch.from_numpy(x).cuda().to(TORCH_DTYPES[engine.get_tensor_dtype(inp)]).contiguous()
    ctx.set_input_shape(inp, tuple(xt.shape))
    ctx.set_tensor_address(inp, xt.data_ptr())
    alloc, buffers = _Allocator(), {}
    for n in outs:
        shape = tuple(ctx.get_tensor_shape(n))
        if any(d < 0 for d in shape):
            ctx.set_output_allocator(n, alloc)
        else:
            buffers[n] = torch.empty(shape, dtype=TORCH_DTYPES[engine.get_tensor_dtype(n)], device="cuda")
            ctx.set_tensor_address(n, buffers[n].data_ptr())
    stream = torch.cuda.current_stream()
    if not ctx.execute_async_v3(stream.cuda_stream):
        raise SystemExit("TensorRT execution failed")
    stream.synchronize()
    for n in outs:
        if n not in buffers:
            dtype = TORCH_DTYPES[engine.get_tensor_dtype(n)]
            count = int(np.prod(alloc.shapes[n]))
            raw = alloc.buffers[n][: count * torch.empty((), dtype=dtype).element_size()]
            buffers[n] = raw.view(dtype).reshape(alloc.shapes[n])
    order = output_names or outs
    return [buffers[n].float().cpu().numpy() if buffers[n].is_floating_point() else buffers[n].cpu().numpy()
            for n in order]


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
    x, scale = preprocess(args.image, spec)
    outputs = run_engine(HERE / meta["model_file"], x, meta.get("output_names"))
    if meta["task"] == "classification":
        result = classification(outputs, labels, args.top_k)
    else:
        threshold = args.score_threshold if args.score_threshold is not None else meta.get("score_threshold", 0.25)
        result = detection(outputs, labels, scale, threshold)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
