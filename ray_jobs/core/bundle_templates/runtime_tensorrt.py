"""Run the exported TensorRT engine on one image and print the prediction as JSON.

Requirements: numpy, Pillow, torch (CUDA, for GPU buffers), tensorrt -- the same
TensorRT version and GPU model as recorded in engine.json (engines only load where they were built).
"""

import pathlib

import numpy as np
import tensorrt as trt
import torch


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


def run_model(path, x, meta):
    """The engine's outputs (numpy arrays, in the ONNX file's output order) for the batch x."""
    return run_engine(path, x, meta.get("output_names"))
