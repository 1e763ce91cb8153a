"""Evaluation images/s: the appliance's evaluation path vs a bare `torch.no_grad()` loop (issue 5).

Generates a coloured-square classification set (tests/fixtures.py `make_classification_folder`),
trains a checkpoint for one epoch with the Ray-free core (`ray_jobs.core.fit.fit_local`,
random init, on `--train-images` of them: it only has to be a real checkpoint), then, in the same process and interleaved `--repeat` times:

  ours  `ray_jobs.evaluate.predict_samples(checkpoint, samples)` (loads the checkpoint once, decodes
        and resizes in a thread a batch ahead of the model, normalizes per batch, predicts in
        batches sized from the image size: 32 up to 64 px, else 16) + `compute_results` (all the
        classification metrics and the per-sample ranking) — what the evaluation task runs,
        minus its database writes;
  bare  `load_checkpoint` (the same load) + a hand-written loop: PIL decode -> RGB -> resize
        (bilinear) -> /255 -> ImageNet normalize -> batches of 16 -> `model(x)` -> softmax
        under `torch.no_grad()`.

Both see the same model, the same files and the same preprocessing; their predictions are
compared (argmax agreement, max |prob diff|) to show the work is the same. The best of the
repeats counts (a shared host only adds noise); the median is printed too.

With `--ray` it also starts a local Ray and runs ours as a Ray task with the evaluation task's
resources (`task_resources`: num_cpus=1, no GPU on a CPU host): first (cold worker) and warm calls.
The task asks for as many CPUs as torch has threads in the driver (`--threads`, default 1 = exactly
`task_resources`), and the evaluation sets torch's threads to the task's CPUs, so both sides run
torch with the same thread count. `--source-size` makes the files larger than the model's input
(real photos), so decoding and resizing weigh more.

    python benchmarks/eval_throughput.py                       # 256 images, 64 px, 1 thread, ~1-2 min
    python benchmarks/eval_throughput.py --images 1000 --image-size 96 --repeat 5 --threads 0 --ray

Prints images/s of each, the ratio ours/bare (target: close to 1.0) and a JSON line
(`{"benchmark": "eval_throughput", ...}`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit_json, machine  # noqa: E402

CLASSES = ("red", "blue", "green", "yellow")
BATCH = 16


def make_samples(root: Path, images: int, size: int) -> tuple[list[dict], list[str]]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.fixtures import make_classification_folder

    gen = make_classification_folder(root, classes=CLASSES, per_class=max(1, images // len(CLASSES)), size=size)
    names = gen.classes  # sorted
    index = {n: i for i, n in enumerate(names)}
    samples = [{"path": str(root / item.relpath), "label": index[item.label], "image_id": str(i),
                "filename": item.relpath} for i, item in enumerate(gen.items)]
    return samples, names


def train_checkpoint(samples: list[dict], names: list[str], size: int, run_dir: Path, model: str,
                     train_images: int) -> str:
    """One epoch on every k-th sample (all classes; the checkpoint only has to be real)."""
    from ray_jobs.core import TrainConfig
    from ray_jobs.core.fit import fit_local

    config = TrainConfig(model=model, num_classes=len(names), class_names=names, epochs=1, batch_size=32,
                         image_size=size, pretrained=False)
    train = samples[::max(1, len(samples) // max(train_images, 1))][:train_images]
    val = train[::4]
    result = fit_local(config, train, val, run_dir, accelerator="cpu")
    return result["best_ckpt"] or result["last_ckpt"]


def run_ours(checkpoint: str, samples: list[dict], names: list[str]) -> tuple[float, dict, list[list[float]]]:
    from ray_jobs.evaluate import compute_results, predict_samples

    start = time.perf_counter()
    meta, predictions = predict_samples(checkpoint, samples, gpu_fraction=0.25)
    predicted = time.perf_counter()
    metrics, _records = compute_results("classification", names, samples, predictions)
    end = time.perf_counter()
    return end - start, {"predict_s": predicted - start, "metrics_s": end - predicted,
                         "accuracy": metrics["accuracy"]}, [p["probs"] for p in predictions]


def run_bare(checkpoint: str, samples: list[dict]) -> tuple[float, dict, "torch.Tensor"]:
    import numpy as np
    import torch
    from PIL import Image

    from ray_jobs.core.inference import load_checkpoint

    start = time.perf_counter()
    model, meta = load_checkpoint(checkpoint)
    loaded = time.perf_counter()
    spec = meta["preprocess"]
    size = spec["image_size"]
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    outputs = []
    with torch.no_grad():
        for i in range(0, len(samples), BATCH):
            batch = []
            for sample in samples[i:i + BATCH]:
                with Image.open(sample["path"]) as im:
                    im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                batch.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
            x = (torch.stack(batch).float() / 255 - mean) / std
            outputs.append(torch.softmax(model(x), dim=1))
    probs = torch.cat(outputs)
    end = time.perf_counter()
    return end - start, {"load_s": loaded - start, "loop_s": end - loaded}, probs


def ray_eval_remote():
    import ray

    @ray.remote(max_retries=0)
    def evaluate_in_task(checkpoint: str, samples: list[dict], names: list[str]) -> dict:
        import os

        import torch

        seconds, parts, _ = run_ours(checkpoint, samples, names)
        return {"seconds": seconds, **parts, "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    return evaluate_in_task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=0,
                        help="pixels per side of the generated files (0: --image-size); larger = more decoding")
    parser.add_argument("--train-images", type=int, default=128, help="images the 1-epoch checkpoint trains on")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeat", type=int, default=4, help="interleaved runs of each side (best counts)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both sides (0: torch's default). 1 is what the evaluation "
                             "task gets on a CPU host (num_cpus=1, so Ray sets OMP_NUM_THREADS=1), and it is far "
                             "steadier than 2 on a shared 2-core host")
    parser.add_argument("--ray", action="store_true", help="also run ours as a Ray task (starts a local Ray)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    before = machine()
    print(f"machine before: {before}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp:
        tmp = Path(tmp)
        samples, names = make_samples(tmp / "data", args.images, args.source_size or args.image_size)
        n = len(samples)
        start = time.perf_counter()
        checkpoint = train_checkpoint(samples, names, args.image_size, tmp / "run", args.model, args.train_images)
        print(f"trained {args.model} for 1 epoch on {args.train_images} of the {n} images of {args.image_size} px in "
              f"{time.perf_counter() - start:.1f} s -> {Path(checkpoint).name}", flush=True)

        # warm-up both (first-call costs: lazy imports, allocator, page cache)
        run_ours(checkpoint, samples[:BATCH], names)
        run_bare(checkpoint, samples[:BATCH])

        ours_runs, bare_runs = [], []
        agreement = max_diff = None
        for r in range(args.repeat):
            order = ("ours", "bare") if r % 2 == 0 else ("bare", "ours")
            for side in order:
                if side == "ours":
                    seconds, parts, ours_probs = run_ours(checkpoint, samples, names)
                    ours_runs.append({"seconds": seconds, **parts})
                else:
                    seconds, parts, bare_probs = run_bare(checkpoint, samples)
                    bare_runs.append({"seconds": seconds, **parts})
                print(f"  run {r + 1} {side}: {seconds:.2f} s  {n / seconds:.0f} images/s", flush=True)
            ours_t = torch.tensor(ours_probs)
            agreement = float((ours_t.argmax(1) == bare_probs.argmax(1)).float().mean())
            max_diff = float((ours_t - bare_probs).abs().max())

        ray_result = None
        if args.ray:
            ray_result = run_ray(checkpoint, samples, names, args.repeat)

    best = lambda runs: min(x["seconds"] for x in runs)  # noqa: E731
    med = lambda runs: statistics.median(x["seconds"] for x in runs)  # noqa: E731
    ours_ips, bare_ips = n / best(ours_runs), n / best(bare_runs)
    result = {
        "images": n, "image_size": args.image_size, "source_size": args.source_size or args.image_size, "model": args.model, "repeat": args.repeat,
        "torch_threads": torch.get_num_threads(),
        "ours_images_per_s": round(ours_ips, 1), "bare_images_per_s": round(bare_ips, 1),
        "ratio_ours_over_bare": round(ours_ips / bare_ips, 3),
        "ratio_median": round(med(bare_runs) / med(ours_runs), 3),
        "ours_best_breakdown_s": {k: round(v, 3) for k, v in min(ours_runs, key=lambda x: x["seconds"]).items()
                                  if isinstance(v, float)},
        "bare_best_breakdown_s": {k: round(v, 3) for k, v in min(bare_runs, key=lambda x: x["seconds"]).items()},
        "argmax_agreement": agreement, "max_abs_prob_diff": max_diff,
        "accuracy_after_1_epoch": ours_runs[-1]["accuracy"],
    }
    if ray_result:
        result["ray_task"] = ray_result
    after = machine()
    ob, bb = result["ours_best_breakdown_s"], result["bare_best_breakdown_s"]
    print(f"ours (predict_samples + compute_results): {ours_ips:.0f} images/s "
          f"(predict {ob['predict_s']:.2f} s incl. checkpoint load, metrics {ob['metrics_s']:.3f} s)")
    print(f"bare no_grad loop:                        {bare_ips:.0f} images/s "
          f"(load {bb['load_s']:.2f} s, loop {bb['loop_s']:.2f} s)")
    print(f"ratio ours/bare: {result['ratio_ours_over_bare']:.2f}x best-of-{args.repeat} "
          f"({result['ratio_median']:.2f}x on medians); same predictions: argmax agreement {agreement:.3f}, "
          f"max |prob diff| {max_diff:.2e}")
    if ray_result:
        print(f"as a Ray task: cold {ray_result['cold_images_per_s']:.0f} images/s = "
              f"{ray_result['ratio_cold_over_bare']:.2f}x bare, warm "
              f"{ray_result['warm_images_per_s']:.0f} images/s = {ray_result['ratio_warm_over_bare']:.2f}x bare "
              f"({ray_result['ratio_warm_median']:.2f}x on medians) "
              f"({ray_result['bare_images_per_s']:.0f} images/s in the same phase) "
              f"(worker torch threads {ray_result['torch_threads']}, OMP_NUM_THREADS={ray_result['omp_num_threads']}; "
              f"ray.init {ray_result['ray_init_s']:.1f} s not counted)")
    print(f"machine after: {after}", flush=True)
    emit_json("eval_throughput", machine_before=before, machine_after=after, **result)


def run_ray(checkpoint: str, samples: list[dict], names: list[str], repeat: int) -> dict:
    """Ours as a Ray task with the evaluation task's resources (`task_resources`), except that it asks
    for as many CPUs as torch has threads here, so the task (torch threads = its CPUs,
    `ray_jobs.evaluate.task_threads`) and the bare loop run with the same thread count (1 by default:
    exactly `task_resources`). A cold call (new worker), then `repeat` warm calls, each followed by a
    bare run in the driver; ratios best-of and on medians."""
    import ray
    import torch

    from ray_jobs.evaluate import task_resources

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, namespace="bench-eval",
             num_cpus=max(2, torch.get_num_threads()))
    init_s = time.perf_counter() - start
    try:
        resources = {**task_resources(0.25), "num_cpus": torch.get_num_threads()}
        remote = ray_eval_remote().options(**resources)
        n = len(samples)
        calls, bare_runs = [], []
        for r in range(repeat + 1):
            start = time.perf_counter()
            out = ray.get(remote.remote(checkpoint, samples, names))
            out["round_trip_s"] = time.perf_counter() - start
            calls.append(out)
            seconds, parts, _ = run_bare(checkpoint, samples)  # interleaved: the comparison shares the moment
            bare_runs.append({"seconds": seconds, **parts})
            print(f"  ray task {'cold' if r == 0 else 'warm'}: {out['round_trip_s']:.2f} s round trip "
                  f"({n / out['round_trip_s']:.0f} images/s, in the task {out['seconds']:.2f} s); "
                  f"bare {seconds:.2f} s ({n / seconds:.0f} images/s)", flush=True)
        warm = [c["round_trip_s"] for c in calls[1:]]
        bare = [x["seconds"] for x in bare_runs[1:]]
        return {
            "ray_init_s": round(init_s, 2), "resources": resources,
            "cold_round_trip_s": round(calls[0]["round_trip_s"], 3),
            "cold_images_per_s": round(n / calls[0]["round_trip_s"], 1),
            "ratio_cold_over_bare": round(bare_runs[0]["seconds"] / calls[0]["round_trip_s"], 3),
            "warm_round_trip_s": round(min(warm), 3), "warm_images_per_s": round(n / min(warm), 1),
            "bare_images_per_s": round(n / min(bare), 1), "ratio_warm_over_bare": round(min(bare) / min(warm), 3),
            "ratio_warm_median": round(statistics.median(bare) / statistics.median(warm), 3),
            "torch_threads": calls[-1]["torch_threads"], "omp_num_threads": calls[-1]["omp_num_threads"],
        }
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
