"""GPU check (issue 6): TensorRT FP16 vs PyTorch eager FP32 throughput at batch 32, resnet50.

Target: TensorRT fp16 >= 3x eager fp32 images/s. Also reports eager fp16, and checks the
engine's logits against PyTorch (parity) through ``TensorRTRunner`` (torch CUDA buffers).
Without TensorRT it says so and still reports the eager fp32/fp16 figures; without a CUDA
GPU it exits after saying so. Exit code 0 unless something that ran failed.

Run on a GPU host: python benchmarks/gpu_export_check.py [--batch 32] [--iters 30] [--json out.json]
"""

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_jobs.core import export as ex  # noqa: E402

PRE = {"image_size": 224, "resize": "stretch", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "scale": 1 / 255, "channel_order": "RGB", "layout": "NCHW"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"batch": args.batch, "model": "resnet50", "image_size": 224,
                    "measured_at": time.strftime("%Y-%m-%d %H:%M")}

    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU visible to PyTorch; run this on a GPU host.")
        return 0
    report["gpu"] = torch.cuda.get_device_name(0)
    report["torch"] = torch.__version__
    print(f"GPU: {report['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(args.batch, 3, 224, 224, device="cuda")
    for label, half in (("pytorch_eager_fp32", False), ("pytorch_eager_fp16", True)):
        runner = ex.PyTorchRunner(copy.deepcopy(model), "classification", device="cuda", half=half)
        report[label] = ex.measure_latency(runner, x, iters=args.iters, warmup=5)
        del runner
    base = report["pytorch_eager_fp32"]["images_per_s"]
    print(f"eager fp32: {base:.0f} img/s, eager fp16: {report['pytorch_eager_fp16']['images_per_s']:.0f} img/s "
          f"({report['pytorch_eager_fp16']['images_per_s'] / base:.2f}x)")

    ok, reason = ex.tensorrt_available()
    report["tensorrt_available"], report["tensorrt_reason"] = ok, reason
    if not ok:
        print(f"SKIP TensorRT: {reason}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path, engine_path = Path(tmp) / "resnet50.onnx", Path(tmp) / "resnet50.engine"
            report["onnx"] = ex.export_onnx(model, "classification", PRE, onnx_path)
            report["engine"] = ex.export_tensorrt(onnx_path, engine_path, precision="fp16", max_batch=args.batch,
                                                  image_size=224)
            report["parity"] = ex.parity_check(model, "classification", engine_path, "tensorrt", x[:8].cpu(),
                                               precision="fp16", device="cuda")
            trt_runner = ex.TensorRTRunner(engine_path, "classification")
            report["tensorrt_fp16"] = ex.measure_latency(trt_runner, x, iters=args.iters, warmup=5)
        ratio = report["tensorrt_fp16"]["images_per_s"] / base
        report["tensorrt_fp16_vs_eager_fp32"] = ratio
        print(f"TensorRT {report['engine']['tensorrt']['tensorrt_version']} fp16: "
              f"{report['tensorrt_fp16']['images_per_s']:.0f} img/s = {ratio:.2f}x eager fp32 (target >= 3x); "
              f"parity max abs diff {report['parity']['max_abs_diff']:.3g}, "
              f"top-1 agreement {report['parity']['top1_agreement']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("onnx", "engine")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
