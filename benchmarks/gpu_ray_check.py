"""GPU check through Ray: the appliance's training path — a Ray Train V2 `TorchTrainer` with
`use_gpu=True`, one worker asking for `--gpu-fraction` of the card, running the training core's
Lightning fit with Ray's DDP strategy and environment (what `ray_jobs.train.train_loop_per_worker`
runs) — against the same fit without Ray in the same run (`fit_local`, the baseline).

Reports, for each: training images/s after the warm-up epoch and NVML GPU utilisation; for the Ray
run also what the worker was given (`ray.get_gpu_ids()`, `CUDA_VISIBLE_DEVICES`, the device the
model's weights sit on) and the GPU left free in the cluster while it trained (the fraction asked
for is what was taken). The ratio `ray_vs_core_images_per_s` is the cost of running through Ray.

Needs Ray (carry its wheel to a GPU host that lacks it) and CUDA; `--allow-cpu` dry-runs the same
code on a CPU host with `use_gpu=False`. Prints one JSON line. Exit: 2 without CUDA, 1 when a check
fails, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_check import GpuSampler  # noqa: E402
from train_epoch import make_config, make_images  # noqa: E402


def train_loop(cfg: dict) -> None:
    """The Train worker: `train_loop_per_worker`'s fit, with events collected instead of stored."""
    import ray
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from ray_jobs.core.fit import BestLastCheckpoint, EpochEventCallback, assemble_fit
    from ray_jobs.core.module import TrainConfig

    import lightning as L

    class WhereItTrains(L.Callback):
        """Notes the device the weights sit on while training (Lightning moves them back to the
        CPU when the fit ends)."""

        device = "unknown"

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            WhereItTrains.device = str(next(pl_module.parameters()).device)

    events: list[dict] = []
    callbacks = [EpochEventCallback(events.append), BestLastCheckpoint(Path(cfg["run_dir"]) / "weights"),
                 WhereItTrains()]
    trainer, module, datamodule = assemble_fit(
        TrainConfig.from_dict(cfg["config"]), cfg["train"], cfg["val"], callbacks,
        accelerator="gpu" if cfg["use_gpu"] else "cpu", devices="auto",
        strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], default_root_dir=cfg["run_dir"],
    )
    prepare_trainer(trainer).fit(module, datamodule=datamodule)
    worker = {
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "weights_device": WhereItTrains.device,
        "cuda_device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    # Train V2 keeps metrics only beside a checkpoint: hand the figures back through the run folder.
    (Path(cfg["run_dir"]) / "worker.json").write_text(json.dumps({"events": events, "worker": worker}))


def ray_train_fit(config, train, val, run_dir: Path, use_gpu: bool, fraction: float) -> tuple[list[dict], dict, list[float]]:
    """Run `train_loop` under a TorchTrainer; also sample the cluster's free GPU while it runs."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    free_gpu: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            free_gpu.append(ray.available_resources().get("GPU", 0.0))

    threading.Thread(target=watch, daemon=True).start()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.to_dict(), "train": train, "val": val, "run_dir": str(run_dir),
                           "use_gpu": use_gpu},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                     resources_per_worker={"GPU": fraction} if use_gpu else None),
        run_config=RunConfig(name="gpu_ray_check", storage_path=str(run_dir / "ray_results")),
    )
    try:
        trainer.fit()
    finally:
        done.set()
    handed = json.loads((run_dir / "worker.json").read_text())
    return handed["events"], handed["worker"], free_gpu


def throughput(events: list[dict]) -> float:
    tail = events[1:] or events
    return round(statistics.mean(e["images_per_s"] for e in tail), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="including the warm-up epoch")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--gpu-fraction", type=float, default=0.5,
                        help="what the Train worker asks for (AISTUDIO_TRAIN_GPU_FRACTION)")
    parser.add_argument("--allow-cpu", action="store_true", help="dry-run on a CPU host (use_gpu=False)")
    args = parser.parse_args(argv)

    report: dict = {"benchmark": "gpu_ray_check", "torch": torch.__version__}
    use_gpu = torch.cuda.is_available()
    if not use_gpu and not args.allow_cpu:
        report["error"] = "CUDA is not available"
        print(json.dumps(report))
        return 2
    import ray

    report["ray"] = ray.__version__
    report["device"] = torch.cuda.get_device_name(0) if use_gpu else "cpu"
    ray.init(num_gpus=torch.cuda.device_count() if use_gpu else 0, num_cpus=os.cpu_count())
    report["cluster_gpus"] = ray.cluster_resources().get("GPU", 0.0)
    checks: dict[str, str] = {}
    sampler = GpuSampler()
    config = make_config(args.model, args.image_size, args.batch_size, args.epochs, args.num_workers)
    report["classification"] = {"model": args.model, "images": args.images, "image_size": args.image_size,
                                "batch_size": args.batch_size, "epochs": args.epochs,
                                "num_workers": args.num_workers, "gpu_fraction": args.gpu_fraction}
    with tempfile.TemporaryDirectory(prefix="gpu_ray_check_") as tmp:
        root = Path(tmp)
        train = make_images(root / "train", args.images, args.image_size, seed=1)
        val = make_images(root / "val", max(args.images // 8, 8), args.image_size, seed=2)
        from ray_jobs.core import fit_local

        try:
            events: list[dict] = []
            with sampler:
                fit_local(config, train, val, root / "core", publish=events.append,
                          accelerator="gpu" if use_gpu else "cpu")
            report["core"] = {"train_images_per_s": throughput(events), "val_metric": events[-1]["val_metric"],
                              "gpu": sampler.summary()}
            checks["core_fit"] = "ok"
        except Exception:
            checks["core_fit"] = traceback.format_exc(limit=6)

        try:
            start = time.perf_counter()
            with sampler:
                events, worker, free_gpu = ray_train_fit(config, train, val, root / "ray", use_gpu, args.gpu_fraction)
            report["ray_train"] = {
                "train_images_per_s": throughput(events), "val_metric": events[-1]["val_metric"],
                "wall_s_incl_start": round(time.perf_counter() - start, 1), "worker": worker,
                "cluster_gpu_free_min": min(free_gpu) if free_gpu else None, "gpu": sampler.summary(),
            }
            if use_gpu:
                on_gpu = worker["weights_device"].startswith("cuda") and bool(worker["gpu_ids"])
                took = report["cluster_gpus"] - (min(free_gpu) if free_gpu else report["cluster_gpus"])
                report["ray_train"]["gpu_taken"] = round(took, 3)
                checks["ray_train_on_gpu"] = "ok" if on_gpu else f"worker not on the GPU: {worker}"
                checks["ray_train_fraction"] = ("ok" if abs(took - args.gpu_fraction) < 1e-6
                                                else f"took {took} of the GPU, asked {args.gpu_fraction}")
            checks["ray_train_fit"] = "ok" if len(events) == args.epochs else f"{len(events)} epochs"
        except Exception:
            checks["ray_train_fit"] = traceback.format_exc(limit=6)

    if "core" in report and "ray_train" in report:
        report["ray_vs_core_images_per_s"] = round(
            report["ray_train"]["train_images_per_s"] / report["core"]["train_images_per_s"], 3)
    report["checks"] = checks
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    report["ok"] = not failed
    ray.shutdown()
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
