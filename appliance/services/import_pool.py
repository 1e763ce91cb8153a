"""The import's process pool (issue #14, item 3): each image read, hashed, decoded, stored and
thumbnailed once, by as many processes as the host has cores (`AISTUDIO_IMPORT_WORKERS`).

The import's worker process (`import_worker`) hands the pool chunks of files in order and takes
the results back in the same order, with at most a few chunks in flight: memory does not grow with
the dataset, and the results (warnings, rows, duplicates) come out exactly as one process would
produce them. Pool processes are forked from the import's worker (spawned where Ray is loaded:
`start_method`) and die with it (a killed or
cancelled import never leaves one writing). With one worker, or a single chunk, nothing is forked.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.importers import SourceUnreadable, UnreadableImage, ingest_file, problem_warning
from appliance.services import health
from appliance.store.paths import Workspace

CHUNK = 32  # files per task: enough to amortise the hand-over, few enough to keep every process busy
IN_FLIGHT_PER_WORKER = 2


def pool_size(configured: int) -> int:
    """`AISTUDIO_IMPORT_WORKERS`, 0 meaning one per CPU core this process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Target:
    """Where a chunk's files go, and how."""
    images_dir: str
    thumbs_dir: str
    max_pixels: int
    move: bool  # the source files are ours (an extracted upload): renamed, not copied


# One file's outcome: ("ok", filename, ImageInfo, size_bytes, has_thumbnail, phash) or ("skip", reason).
Result = tuple


def ingest_chunk(target: Target, jobs: list[tuple[str, str, str]]) -> list[Result]:
    """Ingest `jobs` ((image_id, source path, relative path) each) in order. A file that cannot be
    read or decoded is a skip with its reason (the warning's text); any other error (the workspace
    disk) propagates and fails the import."""
    out: list[Result] = []
    images_dir, thumbs_dir = Path(target.images_dir), Path(target.thumbs_dir)
    for image_id, source, relpath in jobs:
        try:
            done = ingest_file(Path(source), image_id, images_dir, thumbs_dir,
                               thumb_name=Workspace.thumb_name, max_pixels=target.max_pixels, move=target.move,
                               fingerprint=health.phash_hex)
        except (UnreadableImage, SourceUnreadable) as exc:
            out.append(("skip", problem_warning(relpath, exc).reason))
            continue
        out.append(("ok", done.filename, done.info, done.size_bytes, done.thumbnail, done.fingerprint))
    return out


def start_method() -> str:
    """`fork` from the import's worker process (cheap: nothing to import again). `spawn` from a process
    that has loaded Ray (a Ray driver or worker, a test session): a fork copies the locks Ray's and gRPC's
    threads hold at that moment, and the child hangs on one (a CI run did, in the pool's first chunk).
    Not `forkserver`: its processes are not this one's children, and each must die with its parent."""
    if not hasattr(os, "fork") or "ray" in sys.modules:
        return "spawn"
    return "fork"


def _init_worker(parent: int) -> None:
    """In each pool process: die with the import's worker, leave Ctrl-C to it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux
        pass
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class IngestPool:
    """`run(chunks)` yields each chunk's results in order; `close()` (or the context's exit) stops
    the processes at once, whatever they are doing (a cancel or a failure: the caller then removes
    what they wrote, see `datasets._stage_and_commit`)."""

    def __init__(self, workers: int, target: Target):
        self.target, self.workers = target, max(1, workers)
        self._pool = None

    def __enter__(self) -> IngestPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, chunks: Iterable[list], job: Callable[[object], tuple[str, str, str]]) -> Iterator[tuple[list, list[Result]]]:
        """For each chunk (a list of the caller's items, in order): `(chunk, results)`, in order;
        `job(item)` is what a pool process gets for an item: (image_id, source path, relative path)."""
        chunks = iter(chunks)
        first, second = next(chunks, None), None
        if first is not None and self.workers > 1:
            second = next(chunks, None)
        if second is None:  # one process, or a single chunk: not worth forking
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                yield chunk, ingest_chunk(self.target, [job(item) for item in chunk])
            return
        context = multiprocessing.get_context(start_method())
        # Freeze what exists now (the source's file list above all) out of the collector's reach: a
        # pool process that ran a collection would touch, and so copy, every page of it.
        gc.freeze()
        try:
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(os.getpid(),))
        finally:
            gc.unfreeze()
        pending: deque = deque()
        window = self.workers * IN_FLIGHT_PER_WORKER
        source = itertools.chain([first, second], chunks)

        def feed() -> None:
            while len(pending) < window:
                chunk = next(source, None)
                if chunk is None:
                    return
                jobs = [job(item) for item in chunk]
                pending.append((chunk, self._pool.apply_async(ingest_chunk, (self.target, jobs))))

        feed()
        while pending:
            chunk, result = pending.popleft()
            results = result.get()
            feed()
            yield chunk, results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def chunked(items: Iterable, size: int | None = None) -> Iterator[list]:
    size = size or CHUNK
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
