"""Thumbnails on request: the lazy fallback, with bounded decoding.

Imports make every thumbnail from the image they decode (`importers.images.ingest_file`), so a page view
only reads a small JPEG. A thumbnail can still be missing — a dataset imported before thumbnails
were made at import, a thumbnail that failed then, one removed by hand — and is then made on
request. Those decodes run in the web process, so they go through `DecodeSlots`: at most
`SLOTS` at a time, and together at most `max_pixels` pixels (the AISTUDIO_MAX_IMAGE_PIXELS
setting), so however many requests arrive, the decoding memory stays near one largest allowed
image (at most 256 MB at the default 64 MP). Waiting requests wait on the event loop, holding no
thread. An image over the limit (imported before the limit existed) is never decoded: it gets a
placeholder, not cached.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import re
import stat
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from appliance.importers import THUMBNAIL_SIZE, make_thumbnail
from appliance.services.projects import get_project
from appliance.store.errors import NotFound
from appliance.store.paths import Workspace, safe_join
from appliance.store.tables import Image

log = logging.getLogger("aistudio.thumbnails")

SLOTS = 2  # concurrent on-request decodes in the web process


class DecodeSlots:
    """An asyncio semaphore of `slots` that also bounds the pixels being decoded at once.

    One decode may always run alone, whatever its size (its size was checked against the limit
    before); a second joins only while both fit within `pixel_budget`."""

    def __init__(self, slots: int = SLOTS, pixel_budget: int = 64_000_000):
        self.slots, self.pixel_budget = slots, pixel_budget
        self.running = 0
        self.pixels = 0
        self.waiting = 0
        self.most_running = 0  # high-water mark, for tests and benchmarks
        self._changed = asyncio.Condition()
        self.making: dict[Path, asyncio.Event] = {}  # thumbnails being made now: others wait for them

    def _fits(self, pixels: int) -> bool:
        return self.running == 0 or (self.running < self.slots and self.pixels + pixels <= self.pixel_budget)

    @asynccontextmanager
    async def hold(self, pixels: int):
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self._fits(pixels))
            finally:
                self.waiting -= 1
            self.running += 1
            self.pixels += pixels
            self.most_running = max(self.most_running, self.running)
        try:
            yield
        finally:
            async with self._changed:
                self.running -= 1
                self.pixels -= pixels
                self._changed.notify_all()


@dataclass(frozen=True)
class ThumbnailTarget:
    thumb: Path  # the cached JPEG (may not exist yet)
    source: Path  # the stored image
    pixels: int  # width x height, from the image row


def thumbnail_target(session: Session, workspace: Workspace, project_id: str, filename: str) -> ThumbnailTarget:
    """Where the thumbnail of `filename` lives, only if it is an image row of this project."""
    get_project(session, project_id)
    row = session.execute(
        select(Image.width, Image.height).where(Image.project_id == project_id, Image.filename == filename)
    ).first()
    if row is None:
        raise NotFound(f"File {filename} not found")
    thumb = safe_join(workspace.thumbs_dir(project_id), Workspace.thumb_name(filename))
    return ThumbnailTarget(thumb, safe_join(workspace.images_dir(project_id), filename), row.width * row.height)


def slots_of(state, max_pixels: int) -> DecodeSlots:
    """The app's slots (made on first use, on the app's event loop)."""
    slots = getattr(state, "thumbnail_slots", None)
    if slots is None:
        slots = state.thumbnail_slots = DecodeSlots(SLOTS, max_pixels)
    return slots


async def ensure_thumbnail(slots: DecodeSlots, target: ThumbnailTarget, max_pixels: int) -> Path | None:
    """The thumbnail file, made now if missing; None when the image is over `max_pixels` (serve
    `placeholder()`). Raises NotFound when the stored image is gone too."""
    if target.thumb.is_file():
        return target.thumb
    if target.pixels > max_pixels:
        return None
    while (making := slots.making.get(target.thumb)) is not None:  # one decode per image, never two
        slots.waiting += 1
        try:
            await making.wait()
        finally:
            slots.waiting -= 1
        if target.thumb.is_file():
            return target.thumb
    done = slots.making[target.thumb] = asyncio.Event()
    try:
        async with slots.hold(target.pixels):
            if target.thumb.is_file():  # made by a request that held the slot before us
                return target.thumb
            if not target.source.is_file():
                raise NotFound(f"File {target.source.name} not found")
            # Not cancellable: the slot stays held until the decode has really ended.
            await run_in_threadpool(make_thumbnail, target.source, target.thumb, THUMBNAIL_SIZE, max_pixels)
    finally:
        del slots.making[target.thumb]
        done.set()
    return target.thumb


# The names imports give stored images (`<image id>.<ext>`). Anything else skips the fast path and
# goes through the database check and `safe_join`, so the fast path never builds a path from a
# name holding a separator, a dot-dot or a leading dot.
_STORED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[A-Za-z0-9]{1,8}")
_MAX_THUMB_BYTES = 4 << 20  # a thumbnail is a ≤256 px JPEG: far below this
IMMUTABLE_S = 31536000


def thumbnail_url(project_id: str, filename: str, sha256: str | None) -> str:
    """The thumbnail's URL, versioned by the image's content so it can be cached for good."""
    version = f"?v={sha256[:16]}" if sha256 else ""
    return f"/api/datasets/{project_id}/thumbnail/{filename}{version}"


def cache_control(behind_token: bool) -> str:
    """Thumbnail URLs carry the image's content version, so they may be cached for good; behind the
    API token only by the user's own browser (`private`), else by any cache (`public`)."""
    return f"{'private' if behind_token else 'public'}, max-age={IMMUTABLE_S}, immutable"


def read_cached(workspace: Workspace, project_id: str, filename: str) -> tuple[bytes, str] | None:
    """The hot path: the thumbnail's bytes and ETag when it exists as a plain file (no symlink),
    without the database or a decode; None otherwise (the caller takes the checked, lazy path).

    Read inline on the event loop: a few-KB file in the page cache costs microseconds, less than
    handing it to a thread."""
    if not _STORED_NAME.fullmatch(filename):
        return None
    # The stored image must still be a plain file here (one lstat): a deleted image, or one replaced
    # by a symlink, takes the checked path (404) even while its thumbnail is still on disk.
    try:
        if not stat.S_ISREG(os.lstat(workspace.images_dir(project_id) / filename).st_mode):
            return None
    except OSError:
        return None
    path = workspace.thumbs_dir(project_id) / Workspace.thumb_name(filename)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_THUMB_BYTES:
            return None
        body = os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)
    return body, f'"{path.stem}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match list with our ETag."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


_PLACEHOLDER: bytes | None = None


def placeholder() -> bytes:
    """A plain grey JPEG for an image too large to decode."""
    global _PLACEHOLDER
    if _PLACEHOLDER is None:
        from PIL import Image as PILImage

        buffer = io.BytesIO()
        PILImage.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), (200, 200, 200)).save(buffer, format="JPEG")
        _PLACEHOLDER = buffer.getvalue()
    return _PLACEHOLDER
