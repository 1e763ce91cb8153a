"""Dataset health (issue 13, item 7): near-duplicates, split leaks and per-image checks.

Perceptual hashes: every image gets a 64-bit `imagehash.phash` of its thumbnail, computed by the
import in the same pass that makes the thumbnail (`importers.images.ingest_file`) and stored as 16 hex
digits in `images.phash`. Images imported before hashes existed get theirs from
`backfill_phashes`, run once in the import lane at start-up (from the small thumbnail JPEG; an
image whose thumbnail is missing is decoded within AISTUDIO_MAX_IMAGE_PIXELS). Until then they
count as `unhashed_images` and take no part in the near-duplicate checks.

Near-duplicates: two images whose hashes differ in at most `distance` bits
(AISTUDIO_NEAR_DUPLICATE_DISTANCE, or the request's `distance`). A group is a connected component
of that relation (single linkage). Grouping never compares all pairs: images with the same hash
share one node (an exact-hash bucket), and the pairs of distinct hashes come from multi-index
hashing (`near_pairs`). The groups are computed in the import lane after each import (`warm`), so
the dataset summary answers from the cache; when a large project's images changed otherwise (a
deletion) the summary starts the computation in the background and reports `pending` meanwhile.
A split leaks when a group has images in train and in val/test: the model
is then tested on pictures it has (nearly) seen, and the test scores come out too good.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from appliance.config import Settings
from appliance.store.db import session_scope
from appliance.store.errors import ValidationFailed
from appliance.store.paths import Workspace
from appliance.store.tables import Box, Image, SplitAssignment

log = logging.getLogger("aistudio.health")

MAX_DISTANCE = 10  # beyond this the neighbourhood of a 64-bit hash is too large to search, and mostly unrelated pictures
TINY_SIDE = 32  # px: an image whose shorter side is below this carries little for a model
HUGE_SIDE = 5000  # px: an image whose longer side is above this is slow to decode at every epoch
EXTREME_ASPECT = 4.0  # width/height above this or below its inverse: squashed when resized to a square
MIN_BOX_SIDE = 1.0  # px: a box narrower or lower than this marks nothing a model can learn
ISSUES = ("near_duplicate", "tiny", "huge", "extreme_aspect", "degenerate_boxes")
LEAK_PAIRS_SHOWN = 100
_BATCH = 4096  # queries per vectorised step of near_pairs (bounds its memory)


# ---------------------------------------------------------------- hashing

# The 8 lowest frequencies of scipy's unnormalised DCT-II over 32 samples: 2 cos(pi k (2n + 1) / 64).
_DCT_LOW = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32) + 1) / 64)


def phash_hex(image) -> str:
    """The 64-bit perceptual hash of a PIL image, as 16 hex digits: `imagehash.phash`, bit for bit.

    Computed here with two small matrix products (only the 8 x 8 lowest frequencies are used) instead
    of two full DCTs, which made the hash a fifth of an import's time per small image. Where a
    coefficient lies so close to the median that rounding could flip its bit (flat images), the hash
    is imagehash's own."""
    from PIL import Image as PILImage

    pixels = np.asarray(image.convert("L").resize((32, 32), PILImage.LANCZOS), dtype=np.float64)
    low = (_DCT_LOW @ pixels @ _DCT_LOW.T).ravel()
    ordered = np.sort(low)
    median = (ordered[31] + ordered[32]) / 2  # numpy.median of 64 values, as imagehash takes it
    if ordered[32] - ordered[31] <= 2e-6 * (1.0 + max(-ordered[0], ordered[63])):  # a bit rounding may flip
        import imagehash

        return str(imagehash.phash(image))
    return np.packbits(low > median).tobytes().hex()


def backfill_phashes(settings: Settings, batch: int = 500) -> int:
    """Hash every image imported before hashes existed (or whose hash failed at import); return how
    many got one. Reads the thumbnail (made now from the image, within max_image_pixels, when it is
    missing). An image that cannot be read keeps no hash and is logged."""
    from appliance.importers import make_thumbnail

    workspace = Workspace(settings.workspace)
    done = 0
    with session_scope(settings.db_url) as s:
        todo = s.execute(select(Image.id, Image.project_id, Image.filename).where(Image.phash.is_(None))).all()
    for start in range(0, len(todo), batch):
        values = {}
        for image_id, project_id, filename in todo[start:start + batch]:
            thumb = workspace.thumbs_dir(project_id) / Workspace.thumb_name(filename)
            try:
                if thumb.is_file():
                    from PIL import Image as PILImage

                    with PILImage.open(thumb) as im:
                        values[image_id] = phash_hex(im.convert("RGB"))
                else:
                    thumb.parent.mkdir(parents=True, exist_ok=True)
                    im = make_thumbnail(workspace.images_dir(project_id) / filename, thumb,
                                        max_pixels=settings.max_image_pixels)
                    values[image_id] = phash_hex(im)
            except Exception as exc:  # a vanished or unreadable file must not stop the others
                log.warning("No perceptual hash for image %s: %s", image_id, exc)
        with session_scope(settings.db_url) as s:
            for image_id, value in values.items():
                s.execute(update(Image).where(Image.id == image_id, Image.phash.is_(None)).values(phash=value))
        done += len(values)
    if done:
        log.info("Perceptual hashes computed for %d image(s) imported before hashing", done)
        for project_id in sorted({project_id for _, project_id, _ in todo}):
            warm(settings.db_url, project_id, settings.near_duplicate_distance)
    return done


# ---------------------------------------------------------------- neighbour search

def _ball(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit mask with at most `radius` bits set."""
    masks = [sum(1 << b for b in bits) for k in range(radius + 1) for bits in itertools.combinations(range(width), k)]
    return np.array(masks, dtype=np.uint64)


def _plan(n: int, distance: int) -> int:
    """How many chunks to cut the 64 bits into, from a cost model for uniform hashes: m chunks of
    about 64/m bits, each searched within radius distance // m (by the pigeonhole principle two
    hashes within `distance` agree that closely on at least one chunk)."""
    best, best_m = math.inf, 1
    for m in range(1, min(distance + 1, 16) + 1):
        width, radius = 64 // m, distance // m
        ball = sum(math.comb(64 // m + (64 % m > 0), k) for k in range(radius + 1))
        cost = m * ball * (math.log2(n + 1) + n / 2.0 ** width)
        if cost < best:
            best, best_m = cost, m
    return best_m


def near_pairs(hashes: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of the distinct uint64 `hashes` that differ in 1..`distance` bits, and
    that number of bits.

    Multi-index hashing: the 64 bits are cut into m chunks; for each chunk the hashes are sorted by
    its value, and each hash looks up (binary search) the chunk values within radius r = distance // m
    of its own — a pair within `distance` is always found on at least one chunk. Cost, for n hashes
    and V = sum_{k<=r} C(64/m, k) lookups per chunk: O(n log n) to sort, O(n * m * V * log n) to look
    up, plus the candidates checked, about n * m * V * n / 2^(64/m) for uniform hashes (m is chosen
    to keep that small: at n = 100 000 and distance 6, m = 4, V = 17). Vectorised with numpy, in
    batches of queries, never n^2."""
    n = len(hashes)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or distance <= 0:
        return empty, empty, empty
    m = _plan(n, distance)
    bounds = [round(64 * c / m) for c in range(m + 1)]
    found_i, found_j = [], []
    for c in range(m):
        lo, width = bounds[c], bounds[c + 1] - bounds[c]
        keys = (hashes >> np.uint64(lo)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        ball = _ball(width, distance // m)
        for start in range(0, n, _BATCH):
            q = np.arange(start, min(n, start + _BATCH))
            variants = (keys[q][:, None] ^ ball[None, :]).ravel()
            qi = np.repeat(q, len(ball))
            left = np.searchsorted(sorted_keys, variants, "left")
            counts = np.searchsorted(sorted_keys, variants, "right") - left
            hit = counts > 0
            qi, left, counts = qi[hit], left[hit], counts[hit]
            total = int(counts.sum())
            if not total:
                continue
            a = np.repeat(qi, counts)
            b = order[np.repeat(left, counts) + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)]
            keep = a < b
            a, b = a[keep], b[keep]
            close = np.bitwise_count(hashes[a] ^ hashes[b]) <= distance
            found_i.append(a[close])
            found_j.append(b[close])
    if not found_i:
        return empty, empty, empty
    pair = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    i, j = pair // n, pair % n
    return i, j, np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)


# ---------------------------------------------------------------- the project's index

@dataclass
class NearIndex:
    """The near-duplicate structure of one project at one distance."""

    image_ids: list[str]  # hashed images, in dataset order
    node: np.ndarray  # per image: its distinct-hash index
    hashes: np.ndarray  # distinct hashes (uint64)
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # distinct-hash pairs within the distance: i, j, bits
    groups: list[list[int]]  # image positions per group of 2+ images, largest first
    unhashed: int

    @property
    def grouped_images(self) -> int:
        return sum(len(g) for g in self.groups)


_CACHE: OrderedDict[tuple, tuple[tuple, NearIndex]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8


def check_distance(distance: int) -> int:
    if not 0 <= distance <= MAX_DISTANCE:
        raise ValidationFailed(f"distance: must be between 0 and {MAX_DISTANCE} bits (got {distance})")
    return distance


def _fingerprint(session: Session, project_id: str) -> tuple:
    return tuple(session.execute(
        select(func.count(Image.id), func.count(Image.phash), func.max(Image.created_at), func.max(Image.id))
        .where(Image.project_id == project_id)
    ).one())


def _key(session: Session, project_id: str, distance: int) -> tuple:
    return (str(session.get_bind().url), project_id, distance)


def _cached(key: tuple, fingerprint: tuple) -> NearIndex | None:
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached and cached[0] == fingerprint:
            _CACHE.move_to_end(key)
            return cached[1]
    return None


def _store(key: tuple, fingerprint: tuple, index: NearIndex) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = (fingerprint, index)
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def near_index(session: Session, project_id: str, distance: int) -> NearIndex:
    """The project's near-duplicate index, rebuilt only when its images changed (a cheap count /
    latest-import fingerprint is compared first). Blocks while it builds: for the pages that list
    groups or leaks; the dataset summary uses `cached_index`, which never waits on a large build."""
    check_distance(distance)
    fingerprint = _fingerprint(session, project_id)
    key = _key(session, project_id, distance)
    index = _cached(key, fingerprint)
    if index is None:
        index = _build(session, project_id, distance)
        _store(key, fingerprint, index)
    return index


# Builds in flight (cache key -> Future), so that a request during a build neither starts a second
# one nor waits: the summary says `pending` instead. Builds a request asks for run here, one at a time.
_BUILDING: dict[tuple, Future] = {}
_BUILDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="near-duplicates")
SYNC_BUILD_MAX = 2000  # hashed images: up to this many a stale index is rebuilt in the request (milliseconds)


def warm(db_url: str, project_id: str, distance: int) -> None:
    """Build the project's index now if its images changed since the cached one (the import lane
    calls this after each import and after the hash backfill, so the dataset page finds it ready)."""
    with session_scope(db_url) as s:
        key = _key(s, project_id, distance)
        fingerprint = _fingerprint(s, project_id)
        if _cached(key, fingerprint) is not None:
            return
        done: Future = Future()
        with _CACHE_LOCK:
            _BUILDING.setdefault(key, done)
        try:
            _store(key, fingerprint, _build(s, project_id, distance))
        finally:
            with _CACHE_LOCK:
                if _BUILDING.get(key) is done:
                    del _BUILDING[key]
            done.set_result(None)


def building(session: Session, project_id: str, distance: int) -> Future | None:
    """The build of this index in flight, if any (tests wait on it)."""
    with _CACHE_LOCK:
        return _BUILDING.get(_key(session, project_id, distance))


def cached_index(session: Session, project_id: str, distance: int) -> NearIndex | None:
    """The index if it is up to date, built here when it is small; otherwise None, with a build
    started in the background (unless one is running): the caller reports the check as pending."""
    check_distance(distance)
    fingerprint = _fingerprint(session, project_id)
    key = _key(session, project_id, distance)
    index = _cached(key, fingerprint)
    if index is not None:
        return index
    with _CACHE_LOCK:
        if key in _BUILDING:
            return None
    if fingerprint[1] <= SYNC_BUILD_MAX:
        index = _build(session, project_id, distance)
        _store(key, fingerprint, index)
        return index
    url = session.get_bind().url.render_as_string(hide_password=False)
    with _CACHE_LOCK:
        if key not in _BUILDING:
            _BUILDING[key] = _BUILDER.submit(_background_build, url, key, project_id, distance)
    return None


def _background_build(url: str, key: tuple, project_id: str, distance: int) -> None:
    try:
        with session_scope(url) as s:
            fingerprint = _fingerprint(s, project_id)
            _store(key, fingerprint, _build(s, project_id, distance))
    except Exception:
        log.exception("Near-duplicate groups of project %s could not be computed", project_id)
    finally:
        with _CACHE_LOCK:
            _BUILDING.pop(key, None)


def _build(session: Session, project_id: str, distance: int) -> NearIndex:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = session.execute(
        select(Image.id, Image.phash).where(Image.project_id == project_id).order_by(Image.created_at, Image.id)
    ).all()
    hashed = [(image_id, int(value, 16)) for image_id, value in rows if value]
    image_ids = [image_id for image_id, _ in hashed]
    values = np.array([value for _, value in hashed], dtype=np.uint64)
    hashes, node = np.unique(values, return_inverse=True)  # exact-hash buckets
    node = node.ravel()
    pairs = near_pairs(hashes, distance)
    k = len(hashes)
    if k:
        graph = coo_matrix((np.ones(len(pairs[0]), dtype=np.int8), (pairs[0], pairs[1])), shape=(k, k))
        _, component = connected_components(graph, directed=False)
    else:
        component = np.zeros(0, dtype=np.int64)
    members: dict[int, list[int]] = {}
    for position, c in enumerate(component[node]):
        members.setdefault(int(c), []).append(position)
    groups = sorted((g for g in members.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
    return NearIndex(image_ids, node, hashes, pairs, groups, len(rows) - len(hashed))


def _refs(session: Session, project_id: str, image_ids: list[str]) -> dict[str, dict]:
    refs = {}
    for start in range(0, len(image_ids), 500):
        for row in session.execute(
            select(Image.id, Image.filename, Image.original_name, Image.label, Image.width, Image.height, Image.phash)
            .where(Image.id.in_(image_ids[start:start + 500]))
        ):
            refs[row.id] = {
                "id": row.id, "filename": row.filename, "original_name": row.original_name, "label": row.label,
                "width": row.width, "height": row.height, "phash": row.phash,
                "thumbnail_url": f"/api/datasets/{project_id}/thumbnail/{row.filename}",
            }
    return refs


def near_duplicate_groups(session: Session, project_id: str, distance: int, offset: int, limit: int) -> tuple[list[dict], int]:
    """A page of groups, largest first; each lists its images with their hashes."""
    index = near_index(session, project_id, distance)
    page = index.groups[offset:offset + limit]
    refs = _refs(session, project_id, [index.image_ids[p] for g in page for p in g])
    groups = []
    for g in page:
        nodes = {int(index.node[p]) for p in g}
        groups.append({"size": len(g), "exact": len(nodes) == 1, "distinct_hashes": len(nodes),
                       "images": [refs[index.image_ids[p]] for p in g]})
    return groups, len(index.groups)


def near_duplicate_ids(session: Session, project_id: str, distance: int) -> set[str]:
    index = near_index(session, project_id, distance)
    return {index.image_ids[p] for g in index.groups for p in g}


# ---------------------------------------------------------------- split leaks

_HELD_OUT = ("val", "test")


def split_leaks(session: Session, project_id: str, split_id: str, distance: int, limit: int = LEAK_PAIRS_SHOWN) -> dict:
    """The near-duplicate pairs of the split with one image in train and the other in val or test:
    their count (per held-out subset) and the first `limit` pairs, exact-hash pairs first."""
    from appliance.services.splits import get_split

    get_split(session, project_id, split_id)
    index = near_index(session, project_id, distance)
    subset_of = dict(session.execute(
        select(SplitAssignment.image_id, SplitAssignment.subset).where(SplitAssignment.split_id == split_id)
    ).all())
    # Per distinct hash: the positions of its images in train and in each held-out subset.
    train: dict[int, list[int]] = {}
    held: dict[str, dict[int, list[int]]] = {s: {} for s in _HELD_OUT}
    for position, image_id in enumerate(index.image_ids):
        subset = subset_of.get(image_id)
        target = train if subset == "train" else held.get(subset)
        if target is not None:
            target.setdefault(int(index.node[position]), []).append(position)
    counts = {s: 0 for s in _HELD_OUT}
    shown: list[tuple[int, int, str, int]] = []

    def add(t: int, o: int, subset: str, bits: int) -> None:
        a, b = train.get(t, ()), held[subset].get(o, ())
        counts[subset] += len(a) * len(b)
        for pa in a:
            for pb in b:
                if len(shown) >= limit:
                    return
                shown.append((pa, pb, subset, bits))

    for subset in _HELD_OUT:
        for node in train.keys() & held[subset].keys():
            add(node, node, subset, 0)
    for i, j, bits in zip(*(arr.tolist() for arr in index.pairs)):
        for subset in _HELD_OUT:
            add(i, j, subset, bits)
            add(j, i, subset, bits)
    refs = _refs(session, project_id, sorted({index.image_ids[p] for pa, pb, *_ in shown for p in (pa, pb)}))
    pairs = [{"distance": bits, "subset": subset, "train_image": refs[index.image_ids[pa]],
              "held_out_image": refs[index.image_ids[pb]]}
             for pa, pb, subset, bits in sorted(shown, key=lambda x: x[3])]
    total = sum(counts.values())
    return {"split_id": split_id, "distance": distance, "count": total, "by_subset": counts,
            "pairs": pairs, "truncated": total > len(pairs), "unhashed_images": index.unhashed}


# ---------------------------------------------------------------- per-image checks

def issue_condition(issue: str) -> ColumnElement[bool]:
    """The SQL condition on Image of an image-list filter (all but `near_duplicate`)."""
    if issue == "tiny":
        return or_(Image.width < TINY_SIDE, Image.height < TINY_SIDE)
    if issue == "huge":
        return or_(Image.width > HUGE_SIDE, Image.height > HUGE_SIDE)
    if issue == "extreme_aspect":
        return or_(Image.width > EXTREME_ASPECT * Image.height, Image.height > EXTREME_ASPECT * Image.width)
    if issue == "degenerate_boxes":
        return Image.id.in_(_degenerate_box_images())
    raise ValidationFailed(f"issue: must be one of {', '.join(ISSUES)}")


def _degenerate(image=Image) -> ColumnElement[bool]:
    """A box under MIN_BOX_SIDE wide or high (zero or negative area included) or reaching outside its
    image. Imports drop zero-area and outside boxes and clip the others (with a warning), so these
    are sub-pixel slivers, or boxes of datasets imported before those rules."""
    return or_(Box.x2 - Box.x1 < MIN_BOX_SIDE, Box.y2 - Box.y1 < MIN_BOX_SIDE, Box.x1 < 0, Box.y1 < 0,
               Box.x2 > image.width, Box.y2 > image.height)


def _degenerate_box_images():
    own = aliased(Image)  # not correlated with the Image of the query filtered
    return select(Box.image_id).join(own, own.id == Box.image_id).where(_degenerate(own))


def imbalance(class_counts: dict[str, int]) -> dict:
    """Largest / smallest class (images per class), with what to do about it."""
    counted = {name: n for name, n in class_counts.items() if n}
    if len(counted) < 2:
        return {"ratio": None, "largest": None, "smallest": None,
                "advice": "Needs at least two classes with images to compare."}
    largest = max(counted, key=lambda k: (counted[k], k))
    smallest = min(counted, key=lambda k: (counted[k], k))
    ratio = round(counted[largest] / counted[smallest], 2)
    if ratio < 1.5:
        advice = "Balanced: nothing to do."
    elif ratio < 3:
        advice = "Mildly imbalanced: a stratified split keeps every class in each subset; watch per-class recall."
    elif ratio < 10:
        advice = (f"Imbalanced: judge the model by per-class recall and the confusion matrix, not accuracy alone; "
                  f"add images of “{smallest}” if you can.")
    else:
        advice = (f"Strongly imbalanced: a model can score well by ignoring “{smallest}”. Add images of the rare "
                  "classes, or use a class-weighted loss or oversampling, and read the per-class metrics.")
    return {"ratio": ratio, "largest": largest, "smallest": smallest, "advice": advice}


def checks(session: Session, project_id: str, class_counts: dict[str, int], distance: int,
           has_boxes: bool = True) -> dict:
    """The health block of the dataset summary (`health`), with the near-duplicate group count —
    None, with `pending`, while a large project's groups are being computed (never waited for).
    One pass over the project's images (its covering index) counts every per-image flag; the boxes
    are read only when the project has some."""
    index = cached_index(session, project_id, distance)

    def flagged(condition):
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    unhashed, tiny, huge, extreme = session.execute(
        select(flagged(Image.phash.is_(None)), flagged(issue_condition("tiny")), flagged(issue_condition("huge")),
               flagged(issue_condition("extreme_aspect"))).where(Image.project_id == project_id)).one()
    bad_boxes = bad_box_images = 0
    if has_boxes:
        bad_boxes, bad_box_images = session.execute(
            select(func.count(Box.id), func.count(func.distinct(Box.image_id))).join(Image, Image.id == Box.image_id)
            .where(Image.project_id == project_id, _degenerate())).one()
    return {
        "near_duplicate_distance": distance,
        "near_duplicate_groups": None if index is None else len(index.groups),
        "near_duplicate_images": None if index is None else index.grouped_images,
        "unhashed_images": unhashed if index is None else index.unhashed,
        "pending": index is None,
        "class_imbalance": imbalance(class_counts),
        "tiny_images": tiny,
        "huge_images": huge,
        "extreme_aspect_images": extreme,
        "degenerate_boxes": bad_boxes,
        "degenerate_box_images": bad_box_images,
        "limits": {"tiny_side": TINY_SIDE, "huge_side": HUGE_SIDE, "extreme_aspect": EXTREME_ASPECT},
    }
