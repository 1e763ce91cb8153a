"""Dataset import throughput vs a plain copy + Pillow decode of the same files (issue #14, item 3).

For each size N it generates N random-content JPEGs (two class folders; `--tiny`: 96x72 pixels, where
per-file overhead dominates), then times, interleaved and on the same (page-cached) files:

  baseline  one process copies each file to a fresh folder (`shutil.copyfile`) and decodes it with
            Pillow (`Image.open(path).load()`): the least any import must do. No hashing, no thumbnail,
            no database: the ratio is strict.
  import    the appliance's import job, as the server runs it (`services.datasets.run_import`: its
            worker process, which reads + sha256-hashes + fully decodes + stores + thumbnails +
            perceptual-hashes each file in a pool of AISTUDIO_IMPORT_WORKERS processes, then inserts
            the rows in one transaction), from a local folder into a fresh workspace.

Reported per size: images/s of both, the ratio import/baseline on wall time (target ≥ 0.9) and on
CPU seconds (the import's CPU includes its worker and pool processes: what the work costs, whatever
else the host runs), and the peak PSS of this process and its children during the import, above the
level before it (target: flat in N). `--zip` also times the same import from an uploaded ZIP.

    python benchmarks/import_throughput.py                          # 1000 and 4000 images (~2 min)
    python benchmarks/import_throughput.py --tiny                   # the same, 96x72 JPEGs
    python benchmarks/import_throughput.py --sizes 20000 100000     # the issue's sizes (minutes)

Baseline and import runs alternate (`--repeat`, best of each kept): a shared host only adds noise.
The load average is printed before and after. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, load_avg, machine  # noqa: E402
from appliance.config import Settings  # noqa: E402
from appliance.services import import_pool  # noqa: E402
from appliance.services.datasets import run_import  # noqa: E402
from appliance.store.db import get_engine, migrate, session_scope  # noqa: E402
from appliance.store.ids import new_id  # noqa: E402
from appliance.store.paths import Workspace  # noqa: E402
from appliance.store.tables import ImportJob, Project  # noqa: E402

TARGET = 0.9


def jpeg(width: int, height: int, rng: random.Random, quality: int) -> bytes:
    """Random content that compresses like a photo: smooth random colour field + fine noise."""
    coarse = Image.frombytes("RGB", (8, 8), rng.randbytes(8 * 8 * 3)).resize((width, height), Image.BILINEAR)
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    Image.blend(coarse, noise, 0.12).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate(folder: Path, n: int, size: tuple[int, int], quality: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        path = folder / ("class_a" if i % 2 else "class_b") / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(*size, rng, quality))
        paths.append(path)
    return paths


class Timer:
    """Wall and CPU seconds of a block: this process's plus its reaped children's (the import's
    worker process, and through it its pool)."""

    @staticmethod
    def _cpu() -> float:
        # This thread (not the PSS sampler's), plus the reaped children.
        me = resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF))
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu


def baseline(paths: list[Path], dest: Path) -> Timer:
    dest.mkdir(parents=True)
    with Timer() as t:
        for i, path in enumerate(paths):
            shutil.copyfile(path, dest / f"{i}.jpg")
            with Image.open(path) as im:
                im.load()
    return t


class PssSampler:
    """Peak PSS (shared pages split between their users, so forked pool processes are not counted
    twice) of this process plus its children while the block runs, sampled every `every_s` from
    /proc/<pid>/smaps_rollup (a full smaps read every few ms would slow the processes it reads)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.proc = every_s, psutil.Process()
        self.peak = self.before = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.before = self.peak = self._pss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._pss())
            time.sleep(self.every_s)

    def _pss(self) -> int:
        total = 0
        for p in (self.proc, *self.proc.children(recursive=True)):
            try:
                with open(f"/proc/{p.pid}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            except (OSError, StopIteration):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        return total

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def appliance_import(work: Path, source: Path | None, archive: Path | None, workers: int) -> tuple[Timer, dict, PssSampler]:
    """Run one import job (its worker process included) into a fresh workspace."""
    settings = Settings(workspace=work / "ws", import_roots=[source.parent if source else work], api_token=None,
                        max_upload_bytes=64 * 1024**3, import_workers=workers)
    Workspace(settings.workspace).ensure()
    migrate(get_engine(settings.db_url))
    project_id, import_id = new_id("project"), new_id("import")
    if archive is not None:  # what the upload route leaves behind: the upload in staging
        stage = settings.workspace / "staging" / import_id
        stage.mkdir(parents=True)
        shutil.copyfile(archive, stage / "upload.zip")
    with session_scope(settings.db_url) as s:
        s.add(Project(id=project_id, name="bench", task="classification"))
        s.flush()
        s.add(ImportJob(id=import_id, project_id=project_id, status="queued", format="folder",
                        source=f"upload:{archive.name}" if archive else str(source)))
    with PssSampler() as pss, Timer() as seconds:
        run_import(settings, import_id)
    with session_scope(settings.db_url) as s:
        job = s.get(ImportJob, import_id)
        record = {"status": job.status, "added": job.added, "error": job.error}
    get_engine(settings.db_url).dispose()
    return seconds, record, pss


def run_size(n: int, args, tmp: Path) -> dict:
    work = tmp / f"n{n}"
    src = work / "src" / "dataset"
    size = (96, 72) if args.tiny else (args.image_size, args.image_size)
    t0 = time.perf_counter()
    paths = generate(src, n, size, args.quality, seed=n)
    gen_s = time.perf_counter() - t0
    data_bytes = sum(p.stat().st_size for p in paths)

    baseline(paths[: min(n, 200)], work / "warm")  # warm the page cache and Pillow
    base_runs, imp_runs, peaks = [], [], []
    for r in range(args.repeat):  # interleaved, best of each kept
        base_runs.append(baseline(paths, work / f"baseline{r}"))
        shutil.rmtree(work / f"baseline{r}")
        seconds, job, pss = appliance_import(work / f"import{r}", src, None, args.workers)
        assert job["status"] == "completed" and job["added"] == n, job
        imp_runs.append(seconds)
        peaks.append(pss.peak - pss.before)
        shutil.rmtree(work / f"import{r}")
    base_s, imp_s = min(t.wall for t in base_runs), min(t.wall for t in imp_runs)
    base_cpu, imp_cpu = min(t.cpu for t in base_runs), min(t.cpu for t in imp_runs)
    result = {
        "images": n,
        "image_size": list(size),
        "mean_kb": round(data_bytes / n / 1024, 1),
        "generate_s": round(gen_s, 2),
        "baseline_runs_s": [round(t.wall, 3) for t in base_runs],
        "import_runs_s": [round(t.wall, 3) for t in imp_runs],
        "baseline_ips": round(n / base_s, 1),
        "import_ips": round(n / imp_s, 1),
        "ratio": round(base_s / imp_s, 3),
        "baseline_cpu_s": round(base_cpu, 3),
        "import_cpu_s": round(imp_cpu, 3),
        "cpu_ratio": round(base_cpu / imp_cpu, 3),
        "import_pss_peak_delta_mb": round(max(peaks) / 1024**2, 1),
    }
    if args.zip:
        archive = work / "dataset.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # JPEGs do not deflate
            for p in paths:
                zf.write(p, p.relative_to(src.parent).as_posix())
        zip_s, zjob, zpss = appliance_import(work / "zip", None, archive, args.workers)
        assert zjob["status"] == "completed" and zjob["added"] == n, zjob
        result.update({"zip_import_ips": round(n / zip_s.wall, 1), "zip_ratio": round(base_s / zip_s.wall, 3),
                       "zip_pss_peak_delta_mb": round((zpss.peak - zpss.before) / 1024**2, 1)})
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000], help="image counts (e.g. 20000 100000)")
    parser.add_argument("--tiny", action="store_true", help="96x72 JPEGs (per-file overhead dominates)")
    parser.add_argument("--image-size", type=int, default=256, help="square image side in pixels (without --tiny)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of the generated images")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of baseline and import (best is kept)")
    parser.add_argument("--workers", type=int, default=0, help="AISTUDIO_IMPORT_WORKERS (0: one per core)")
    parser.add_argument("--zip", action="store_true", help="also time the import from an uploaded ZIP")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    load_before = load_avg()
    workers = import_pool.pool_size(args.workers)
    print(f"load average {load_before}; import pool of {workers} process(es)", file=sys.stderr, flush=True)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="import-bench-") as tmp:
        for n in args.sizes:
            r = run_size(n, args, Path(tmp))
            results.append(r)
            zip_part = f" | from ZIP {r['zip_import_ips']:.0f} img/s ({r['zip_ratio']:.2f}x)" if args.zip else ""
            print(
                f"N={n:>6} {r['image_size'][0]}x{r['image_size'][1]} ({r['mean_kb']} KB/img): baseline "
                f"{r['baseline_ips']:>7.1f} img/s | import {r['import_ips']:>7.1f} img/s → {r['ratio']:.2f}x "
                f"(CPU {r['cpu_ratio']:.2f}x) | peak PSS +{r['import_pss_peak_delta_mb']} MB{zip_part}",
                file=sys.stderr, flush=True,
            )
    growth = None
    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = {"images_x": round(b["images"] / a["images"], 2),
                  "pss_peak_delta_mb": [r["import_pss_peak_delta_mb"] for r in results]}
    load_after = load_avg()
    print(f"load average {load_after}", file=sys.stderr, flush=True)
    emit_json("import_throughput", machine=machine(), import_workers=workers, tiny=args.tiny, target_ratio=TARGET,
              met=all(r["ratio"] >= TARGET for r in results), load_before=load_before, load_after=load_after,
              results=results, growth=growth)


if __name__ == "__main__":
    main()
