"""Split allocation, the pure part: which subset each image goes to, and the counts summary.

No database here (`appliance.services.splits` reads the strata and stores the result), so the
rules below are unit- and property-tested directly (tests/unit/test_split_properties.py).

Stratum of an image: its label (classification) or its dominant box class (detection: the most
frequent label, ties broken by name; images without boxes form their own stratum). Within each
stratum, images (sorted by id) are shuffled by `random.Random(seed)` and cut by the ratios with
largest-remainder rounding; a stratum with at least one image always puts one in train, and one
with at least three images in each non-empty subset — so every class is present in train when it
has enough images.

What that guarantees for the counts (property-tested): per class of n images, each subset is within
one image of n * ratio when every wanted subset has n * ratio >= 1, and within two otherwise (the
minimums move at most one image into each other subset); the totals add those per-class errors, so
they can drift by up to two images per class (issue #13 asks for totals within one image).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

SUBSETS = ("train", "val", "test")
BACKGROUND = "(no boxes)"


def dominant_label(labels: Counter) -> str:
    """The most frequent label of an image's boxes; ties go to the name that sorts first."""
    return sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def assign(strata: dict[str, str], ratios: dict[str, float], seed: int, stratified: bool) -> dict[str, str]:
    """image id → subset. Pure and deterministic for a seed."""
    groups: dict[str, list[str]] = defaultdict(list)
    for image_id, stratum in strata.items():
        groups[stratum if stratified else "all"].append(image_id)
    rng = random.Random(seed)
    result: dict[str, str] = {}
    for key in sorted(groups):
        ids = sorted(groups[key])
        rng.shuffle(ids)
        counts = _cut(len(ids), ratios)
        start = 0
        for subset in SUBSETS:
            for image_id in ids[start:start + counts[subset]]:
                result[image_id] = subset
            start += counts[subset]
    return result


def _cut(n: int, ratios: dict[str, float]) -> dict[str, int]:
    exact = {s: n * ratios[s] for s in SUBSETS}
    counts = {s: math.floor(v) for s, v in exact.items()}
    for s in sorted(SUBSETS, key=lambda s: exact[s] - counts[s], reverse=True)[: n - sum(counts.values())]:
        counts[s] += 1
    # Guarantees: one in train whenever possible; one in each wanted subset from three images up.
    wanted = [s for s in SUBSETS if ratios[s] > 0]
    minimum = {s: (1 if (s == "train" and n >= 1) or (n >= 3 and ratios[s] > 0) else 0) for s in SUBSETS}
    for s in wanted:
        while counts[s] < minimum[s]:
            donor = max((d for d in SUBSETS if counts[d] > minimum[d]), key=lambda d: counts[d], default=None)
            if donor is None:
                break
            counts[donor] -= 1
            counts[s] += 1
    return counts


def summarize(strata: dict[str, str], assignment: dict[str, str]) -> dict:
    """The split's `counts`: images per subset, per subset and class, and the sorted classes."""
    counts: dict[str, dict[str, int]] = {s: {} for s in SUBSETS}
    for image_id, subset in assignment.items():
        counts[subset][strata[image_id]] = counts[subset].get(strata[image_id], 0) + 1
    return {
        "total": {s: sum(c.values()) for s, c in counts.items()},
        "per_class": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "classes": sorted(set(strata.values())),
    }
