"""onnxruntime CPU vs PyTorch eager CPU: latency and throughput at batch 1 and 32 (issue 6).

resnet18, random init (only speed is measured), 224 px. Target: onnxruntime >= 1.0x eager.
Run: python benchmarks/export_latency.py [--iters 20] [--batch 32] [--json out.json]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_jobs.core import export as ex  # noqa: E402

PRE = {"image_size": 224, "resize": "stretch", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "scale": 1 / 255, "channel_order": "RGB", "layout": "NCHW"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="timed runs at batch 1 (batch N gets a quarter)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both runtimes (default: each runtime's own default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pre = {**PRE, "image_size": args.image_size}
    model = torchvision.models.resnet18(weights=None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "resnet18.onnx"
        info = ex.export_onnx(model, "classification", pre, onnx_path)
        x = torch.randn(args.batch, 3, args.image_size, args.image_size)
        parity = ex.parity_check(model, "classification", onnx_path, "onnx", x[:4])
        eager = ex.PyTorchRunner(model, "classification")
        onnx_runner = ex.OnnxRunner(onnx_path, "classification", threads=args.threads)
        results = {}
        for n, iters in ((1, args.iters), (args.batch, max(3, args.iters // 4))):
            xb = x[:n]
            results[n] = {
                "pytorch_eager": ex.measure_latency(eager, xb, iters=iters, warmup=2),
                "onnxruntime": ex.measure_latency(onnx_runner, xb, iters=iters, warmup=2),
            }

    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__} "
          f"({args.threads or 'default'} threads)")
    print(f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
          "(figures are only comparable when this stays below the CPU count)")
    print(f"export: {info['exporter']} exporter, opset {info['opset']}, {info['export_seconds']:.1f} s, "
          f"{info['file_size_bytes'] / 1e6:.1f} MB; parity max abs diff {parity['max_abs_diff']:.2e}")
    print(f"resnet18 {args.image_size}px, CPU")
    print(f"{'batch':>5} | {'runtime':<13} | {'p50 ms':>8} | {'mean ms':>8} | {'img/s':>8}")
    for n, r in results.items():
        for name, m in r.items():
            print(f"{n:>5} | {name:<13} | {m['p50_ms']:8.2f} | {m['mean_ms']:8.2f} | {m['images_per_s']:8.1f}")
        ratio = r["onnxruntime"]["images_per_s"] / r["pytorch_eager"]["images_per_s"]
        r["throughput_ratio"] = ratio
        print(f"{n:>5} | onnxruntime / eager throughput: {ratio:.2f}x (target >= 1.0x)")
    if args.json:
        args.json.write_text(json.dumps({"export": info, "parity": parity, "results": results,
                                         "load_average": [load_before[0], os.getloadavg()[0]],
                                         "measured_at": time.strftime("%Y-%m-%d %H:%M")}, indent=2))


if __name__ == "__main__":
    main()
