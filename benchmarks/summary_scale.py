"""The dataset summary (dataset page, `GET /api/datasets/{id}/summary`) at 10k and 100k images.

Fills a fresh SQLite workspace database (the appliance's migrations) with N synthetic image rows (sizes,
labels, perceptual hashes) for a classification project and N images with two boxes each for a detection
project (one box in 500 degenerate), then times `services.datasets.summary` (best of `--repeat`, after
one warm call that also builds the near-duplicate index). Baseline in the same run: the same database
with the summary's covering indexes (`ix_images_summary`, `ix_boxes_summary`, revision 0005) dropped.
Reports ms per summary, the ratio without ÷ with the indexes, and how the time grows from 10k to 100k.

    python benchmarks/summary_scale.py                   # --sizes 10000 100000, ~1 min
    python benchmarks/summary_scale.py --sizes 100000 --repeat 9

Ends with one JSON line (`{"benchmark": "summary_scale", ...}`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit_json, load_avg, machine  # noqa: E402

from appliance.services import datasets, health  # noqa: E402
from appliance.store.db import get_engine, migrate, session_scope  # noqa: E402
from appliance.store.ids import new_id  # noqa: E402
from appliance.store.tables import Box, Image, Project  # noqa: E402

COVERING = ("ix_images_summary", "ix_boxes_summary")


def fill(url: str, n: int) -> dict[str, str]:
    """One classification and one detection project of `n` images each; their ids by task."""
    from sqlalchemy import insert

    rng = random.Random(0)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    projects = {}
    with session_scope(url) as s:
        for task in ("classification", "detection"):
            pid = new_id("project")
            projects[task] = pid
            s.add(Project(id=pid, name=f"{task}-{n}", task=task, description=""))
            s.flush()
            images, boxes = [], []
            for i in range(n):
                image_id = f"{task[:3]}{i:029x}"
                images.append(dict(
                    id=image_id, project_id=pid, filename=f"{image_id}.jpg", original_name=f"c{i % 10}/{i}.jpg",
                    sha256=secrets.token_hex(32), width=rng.randint(48, 640), height=rng.randint(36, 480),
                    size_bytes=2000, label=f"c{i % 10}" if task == "classification" else None,
                    phash=f"{rng.getrandbits(64):016x}", created_at=start + dt.timedelta(seconds=i)))
                if task == "detection":
                    for k in range(2):
                        boxes.append(dict(image_id=image_id, label=f"c{(i + k) % 10}", x1=1.0, y1=1.0, x2=11.0,
                                          y2=1.0 if i % 500 == 0 else 11.0))
            s.execute(insert(Image), images)
            if boxes:
                s.execute(insert(Box), boxes)
    return projects


def time_summary(url: str, project_id: str, repeat: int) -> float:
    with session_scope(url) as s:
        datasets.summary(s, project_id)  # warm: caches, and the near-duplicate index (built below)
        building = health.building(s, project_id, datasets.DEFAULT_NEAR_DUPLICATE_DISTANCE)
    if building is not None:
        building.result()
    best = float("inf")
    for _ in range(repeat):
        with session_scope(url) as s:
            started = time.perf_counter()
            datasets.summary(s, project_id)
            best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    before = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="summary-scale-") as tmp:
        for n in args.sizes:
            with_db, without_db = Path(tmp) / f"with-{n}.sqlite", Path(tmp) / f"without-{n}.sqlite"
            url = f"sqlite:///{with_db}"
            migrate(get_engine(url))
            projects = fill(url, n)
            get_engine(url).dispose()
            shutil.copyfile(with_db, without_db)
            with sqlite3.connect(without_db) as conn:
                for name in COVERING:
                    conn.execute(f"DROP INDEX {name}")
            for task, pid in projects.items():
                # alternate the two databases, best of each
                without = time_summary(f"sqlite:///{without_db}", pid, args.repeat)
                with_ix = time_summary(url, pid, args.repeat)
                row = {"images": n, "task": task, "with_indexes_ms": round(with_ix, 1),
                       "without_indexes_ms": round(without, 1), "ratio_without_vs_with": round(without / with_ix, 2)}
                rows.append(row)
                print(f"N={n:>7} {task:<14} summary {with_ix:8.1f} ms with the covering indexes, "
                      f"{without:8.1f} ms without ({row['ratio_without_vs_with']:.1f}x)  load {load_avg()}", flush=True)
    growth = {}
    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        for task in ("classification", "detection"):
            a = next(r for r in rows if r["images"] == small and r["task"] == task)
            b = next(r for r in rows if r["images"] == large and r["task"] == task)
            growth[task] = round(b["with_indexes_ms"] / a["with_indexes_ms"], 2)
            print(f"{task}: {large} vs {small} images: x{growth[task]} the time ({large / small:.0f}x the images)")
    emit_json("summary_scale", machine=before, loadavg_after=load_avg(), repeat=args.repeat, runs=rows,
              growth_with_indexes=growth)


if __name__ == "__main__":
    main()
