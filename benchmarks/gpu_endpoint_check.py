"""GPU check of a prediction endpoint (issue #16): the Deploy page's code (`ray_jobs.serving`) serving
one TorchScript classifier twice on a local Ray with the card — an endpoint with a GPU share
(`--gpu-fraction`, `ray_actor_options={"num_gpus": …}`) and the same bundle on the CPU, the
baseline, in the same run.

Checks that the GPU endpoint took exactly its share of the card (the cluster's free GPU), that its
replica holds memory on the card (NVML's process list), and that both endpoints answer the same
images alike (top-1 label; scores within 1e-3). Reports requests/s of each under `--clients`
concurrent clients for `--seconds`, and the ratio GPU ÷ CPU.

Needs Ray with Serve (carry the wheels to a GPU host that lacks them) and CUDA; `--allow-cpu`
dry-runs the same code on a CPU host with a zero share. Prints one JSON line. Exit: 2 without
CUDA, 1 when a check fails, else 0.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import free_port  # noqa: E402

SPEC = {"image_size": 224, "resize": "stretch", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "scale": 1 / 255, "channel_order": "RGB", "layout": "NCHW"}


def make_bundle(folder: Path, model_name: str) -> Path:
    """A TorchScript bundle of a randomly initialised torchvision classifier, by the exporter's code."""
    import torchvision

    from ray_jobs.core.export.bundle import write_bundle
    from ray_jobs.core.export.torchscript import export_torchscript

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None, num_classes=10).eval()
    info = export_torchscript(model, "classification", SPEC, folder / "model.ts")
    write_bundle(folder / "bundle.zip", folder / "model.ts", [f"class{i}" for i in range(10)], SPEC,
                 "classification", info, "torchscript")
    return folder / "bundle.zip"


def make_images(n: int, size: int) -> list[bytes]:
    from PIL import Image

    rng, out = random.Random(0), []
    for _ in range(n):
        noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
        buf = io.BytesIO()
        noise.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def predict(client: httpx.Client, name: str, data: bytes) -> dict:
    r = client.post(f"/models/{name}/predict", content=data, headers={"Content-Type": "image/jpeg"})
    r.raise_for_status()
    return r.json()["data"]


def load(base: str, name: str, images: list[bytes], clients: int, seconds: float) -> float:
    """Requests/s of `clients` threads posting images back to back for `seconds`."""
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> int:
        done = 0
        with httpx.Client(base_url=base, timeout=60) as client:
            while time.perf_counter() < deadline:
                predict(client, name, images[(i + done) % len(images)])
                done += 1
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(worker, range(clients)))
    return total / (time.perf_counter() - start)


def gpu_processes() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return len(pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0)))
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--gpu-fraction", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--allow-cpu", action="store_true", help="dry-run on a CPU host (a zero GPU share)")
    args = parser.parse_args(argv)

    report: dict = {"benchmark": "gpu_endpoint_check", "model": args.model, "torch": torch.__version__}
    use_gpu = torch.cuda.is_available()
    if not use_gpu and not args.allow_cpu:
        report["error"] = "CUDA is not available"
        print(json.dumps(report))
        return 2
    import ray
    from ray import serve

    from ray_jobs import serving

    fraction = args.gpu_fraction if use_gpu else 0.0
    report.update(device=torch.cuda.get_device_name(0) if use_gpu else "cpu", gpu_fraction=fraction)
    ray.init(num_gpus=1 if use_gpu else 0)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    checks: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_endpoint_") as tmp:
        bundle = str(make_bundle(Path(tmp), args.model))
        images = make_images(args.images, 256)
        free_before = ray.available_resources().get("GPU", 0.0)
        for name, share in (("on-gpu", fraction), ("on-cpu", 0.0)):
            config = {"name": name, "bundle": bundle, "api_key_hash": None, "max_batch_size": 8,
                      "batch_wait_ms": 5, "gpu_fraction": share}
            serving.deploy(config, min_replicas=1, max_replicas=1, gpu_fraction=share, cpus=1)
            serving.wait_running(name, timeout_s=300)
        taken = round(free_before - ray.available_resources().get("GPU", 0.0), 6)
        report["gpu_taken"] = taken
        checks["gpu_share"] = "ok" if abs(taken - fraction) < 1e-6 else f"took {taken}, asked {fraction}"

        with httpx.Client(base_url=base, timeout=120) as client:
            worst, same = 0.0, 0
            for data in images:
                a, b = predict(client, "on-gpu", data), predict(client, "on-cpu", data)
                same += a["predictions"][0]["label"] == b["predictions"][0]["label"]
                scores = {p["label"]: p["score"] for p in b["predictions"]}
                worst = max([worst] + [abs(p["score"] - scores[p["label"]]) for p in a["predictions"]
                                       if p["label"] in scores])
        report.update(same_top1=f"{same}/{len(images)}", max_score_diff=worst)
        checks["agree"] = "ok" if same == len(images) and worst <= 1e-3 else f"top-1 {same}/{len(images)}, diff {worst}"
        if use_gpu:
            procs = gpu_processes()
            report["processes_on_gpu"] = procs
            checks["replica_on_gpu"] = "ok" if procs else f"NVML lists {procs} processes on the card"

        load(base, "on-gpu", images, 2, 3)  # warm-up
        gpu_rps = load(base, "on-gpu", images, args.clients, args.seconds)
        cpu_rps = load(base, "on-cpu", images, args.clients, args.seconds)
        report.update(clients=args.clients, gpu_rps=round(gpu_rps, 1), cpu_rps=round(cpu_rps, 1),
                      gpu_vs_cpu_rps=round(gpu_rps / cpu_rps, 2), figures=serving.figures("on-gpu"))
        for name in ("on-gpu", "on-cpu"):
            serving.undeploy(name)
    serve.shutdown()
    ray.shutdown()
    report["checks"] = checks
    report["ok"] = all(v == "ok" for v in checks.values())
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
