"""Split allocation, the pure part: which subset each image goes to, the counts summary, and the
warnings a user should see.

No database here (`appliance.services.splits` reads the strata and stores the result), so the
rules below are unit- and property-tested directly (tests/unit/test_split_properties.py).

Stratum of an image: its label (classification) or the set of classes its boxes contain
(detection, `stratum_of`; images without boxes form their own stratum). The procedure (issue #13):

1. Subset totals: largest remainder of n * ratio over the three subsets, so each total is within one
   image of its share (train gets one image whenever there is one).
2. Per stratum, each subset's count is the floor or the ceiling of its quota n_k * ratio; which
   strata round up is decided over ALL strata at once (largest remainder, a class with nothing in
   train first, then one missing from a wanted subset) so that the counts add up to the totals of
   step 1 exactly. Ties between strata are broken by a shuffle seeded with the split's seed.
3. Within each stratum (strata in name order), the image ids, sorted, are shuffled by one
   `random.Random(seed)` and cut train | val | test by those counts.
4. Every class with images keeps one in train: a class left with none there (its images round into
   val/test, e.g. a single image at 50/50) has one image moved into train, and one train image
   whose classes all stay in train goes to the subset it came from, so the totals do not move.
   Only when no such image exists (more classes than train images) does train grow.

What that guarantees (property-tested): the totals are within one image of n * ratio whenever the
train share can hold one image of every class; every class with images is in train; a subset whose
ratio is 0 gets nothing; and per stratum, every count is the floor or ceiling of its quota when each
stratum's train quota is at least one image (no step-4 moves needed).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping

SUBSETS = ("train", "val", "test")
BACKGROUND = "(no boxes)"
_MAX_NAMED = 8  # classes named in one warning


def stratum_of(classes: Iterable[str]) -> str:
    """Detection stratum: the sorted set of an image's box classes ("car+dog"); no boxes → BACKGROUND."""
    names = sorted(set(classes))
    return "+".join(names) if names else BACKGROUND


def target_totals(n: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Largest remainder of n * ratio (ties: train, val, test); train gets one image when n >= 1."""
    exact = {s: n * ratios[s] for s in SUBSETS}
    counts = {s: math.floor(v) for s, v in exact.items()}
    for s in sorted(SUBSETS, key=lambda s: exact[s] - counts[s], reverse=True)[: n - sum(counts.values())]:
        counts[s] += 1
    if n and not counts["train"]:
        # From the subset most over its exact share: it stays within one image of it.
        donor = max(SUBSETS[1:], key=lambda s: (counts[s] - exact[s], counts[s]))
        counts[donor] -= 1
        counts["train"] += 1
    return counts


def assign(
    strata: Mapping[str, str],
    ratios: Mapping[str, float],
    seed: int,
    stratified: bool,
    classes_of: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, str]:
    """image id → subset. Pure and deterministic for a seed, whatever the order `strata` lists.

    `classes_of` (image id → its classes) says which classes must keep an image in train; by
    default each image's class is its stratum.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for image_id, stratum in strata.items():
        groups[stratum if stratified else "all"].append(image_id)
    rng = random.Random(seed)
    order: dict[str, list[str]] = {}
    for key in sorted(groups):
        ids = sorted(groups[key])
        rng.shuffle(ids)
        order[key] = ids
    counts = allocate({k: len(ids) for k, ids in order.items()}, ratios, random.Random(f"{seed}:ties"))
    result: dict[str, str] = {}
    for key, ids in order.items():
        start = 0
        for subset in SUBSETS:
            for image_id in ids[start:start + counts[key][subset]]:
                result[image_id] = subset
            start += counts[key][subset]
    if stratified:
        classes = {i: set(classes_of[i]) for i in strata} if classes_of is not None else {i: {s} for i, s in strata.items()}
        _keep_every_class_in_train(result, order, counts, ratios, classes)
    return result


def allocate(sizes: Mapping[str, int], ratios: Mapping[str, float], tie_rng: random.Random) -> dict[str, dict[str, int]]:
    """stratum → subset → count: each the floor or ceiling of size * ratio, adding up to
    `target_totals` of all images (largest remainder over all strata)."""
    keys = sorted(sizes)
    totals = target_totals(sum(sizes.values()), ratios)
    exact = {k: {s: sizes[k] * ratios[s] for s in SUBSETS} for k in keys}
    counts = {k: {s: math.floor(v) for s, v in exact[k].items()} for k in keys}
    spare = {k: sizes[k] - sum(counts[k].values()) for k in keys}
    need = {s: totals[s] - sum(counts[k][s] for k in keys) for s in SUBSETS}
    rank = {k: r for r, k in enumerate(tie_rng.sample(keys, len(keys)))}
    cells = [(k, s) for k in keys for s in SUBSETS if exact[k][s] - counts[k][s] > 0]

    def priority(cell):
        k, s = cell
        return (
            not (s == "train" and counts[k]["train"] == 0),  # a class with nothing in train first
            counts[k][s] > 0,  # then one missing from a subset it has a share of
            -(exact[k][s] - counts[k][s]),  # then the largest remainder
            rank[k], SUBSETS.index(s),
        )

    up: set[tuple[str, str]] = set()
    for k, s in sorted(cells, key=priority):
        if spare[k] and need[s]:
            up.add((k, s))
            spare[k] -= 1
            need[s] -= 1
    if any(spare.values()):  # rare: the greedy pass left units; reroute them along augmenting paths
        options: dict[str, list[str]] = defaultdict(list)
        for k, s in cells:
            options[k].append(s)
        holders: dict[str, dict[str, None]] = {s: {} for s in SUBSETS}
        for k, s in sorted(up):
            holders[s][k] = None
        for k in keys:
            while spare[k] and _augment(k, options, holders, up, need):
                spare[k] -= 1
    for k, s in up:
        counts[k][s] += 1
    for k in keys:  # anything still unplaced (only on inconsistent input) goes to train
        counts[k]["train"] += sizes[k] - sum(counts[k].values())
    return counts


def _augment(start: str, options: dict[str, list[str]], holders: dict[str, dict[str, None]],
             up: set[tuple[str, str]], need: dict[str, int]) -> bool:
    """Breadth-first: stratum → subset it may round up in → stratum already rounded up there → … →
    a subset still short of its total; flip the rounded-up cells along that path. `holders` maps a
    subset to the strata rounded up in it (a dict, for a deterministic order)."""
    parent: dict[str, tuple[str, str | None]] = {}  # subset → (stratum that reaches it, subset that stratum came by)
    seen = {start}
    queue: deque[str] = deque()

    def visit(k: str, via: str | None) -> str | None:
        for s in options[k]:
            if (k, s) in up or s in parent:
                continue
            parent[s] = (k, via)
            if need[s] > 0:
                return s
            queue.append(s)
        return None

    found = visit(start, None)
    while found is None and queue:
        s = queue.popleft()
        for k2 in holders[s]:
            if k2 not in seen:
                seen.add(k2)
                found = visit(k2, s)
                if found is not None:
                    break
    if found is None:
        return False
    need[found] -= 1
    node: str | None = found
    while node is not None:  # walk back: round (k, node) up, un-round (k, via)
        k_prev, via_prev = parent[node]
        up.add((k_prev, node))
        holders[node][k_prev] = None
        if via_prev is not None:
            up.discard((k_prev, via_prev))
            del holders[via_prev][k_prev]
        node = via_prev
    return True


def _keep_every_class_in_train(
    result: dict[str, str], order: dict[str, list[str]], counts: dict[str, dict[str, int]],
    ratios: Mapping[str, float], classes: dict[str, set[str]],
) -> None:
    """Step 4: a class with no train image gets one, swapped against a train image it can spare."""
    stratum = {i: k for k, ids in order.items() for i in ids}
    sequence = {i: n for ids in order.values() for n, i in enumerate(ids)}
    in_train: Counter = Counter(c for i, sub in result.items() if sub == "train" for c in classes[i])
    for cls in sorted({c for cs in classes.values() for c in cs}):
        if in_train[cls]:
            continue
        mover = min((i for i, cs in classes.items() if cls in cs),
                    key=lambda i: (stratum[i], -sequence[i]))
        came_from = result[mover]
        _move(result, counts, stratum, mover, "train")
        in_train.update(classes[mover])
        spare = [i for i, sub in result.items() if sub == "train" and i != mover
                 and all(in_train[c] >= 2 for c in classes[i])]
        if not spare:
            continue  # more classes than train images: train grows by one
        size = {k: len(ids) for k, ids in order.items()}
        donor = max(spare, key=lambda i: (counts[stratum[i]]["train"] - size[stratum[i]] * ratios["train"],
                                          stratum[i], sequence[i]))
        _move(result, counts, stratum, donor, came_from)
        in_train.subtract(classes[donor])


def _move(result, counts, stratum, image_id, subset) -> None:
    counts[stratum[image_id]][result[image_id]] -= 1
    counts[stratum[image_id]][subset] += 1
    result[image_id] = subset


def summarize(classes_of: Mapping[str, Iterable[str]], assignment: Mapping[str, str]) -> dict:
    """The split's `counts`: images per subset, and per subset and class the images holding that
    class (a detection image counts once for each class it contains; BACKGROUND for none)."""
    counts: dict[str, Counter] = {s: Counter() for s in SUBSETS}
    for image_id, subset in assignment.items():
        counts[subset].update(set(classes_of[image_id]) or {BACKGROUND})
    totals = Counter(assignment.values())
    return {
        "total": {s: totals[s] for s in SUBSETS},
        "per_class": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "classes": sorted(set().union(*counts.values())),
    }


def warnings(counts: Mapping, ratios: Mapping[str, float], from_source: bool = False) -> list[str]:
    """Human text for what the user should know about a split: a subset they asked for that is empty,
    and the classes missing from a subset."""
    total = counts["total"]
    n = sum(total.values())
    out = []
    classes = [c for c in counts["classes"] if c != BACKGROUND]
    for s in SUBSETS:
        if not total[s]:
            if from_source and s != "test":
                out.append(f"The imported subsets have no {s} images, and training needs {s} images; "
                           "create a split with ratios instead.")
            elif not from_source and ratios[s] > 0:
                why = (f"{ratios[s]:.0%} of {n} images is less than one image" if n * ratios[s] < 1
                       else f"every class keeps an image in train first, which leaves none of the {n} images for it")
                out.append(f"The {s} subset is empty: {why}. Add images or raise the {s} ratio.")
            continue
        missing = [c for c in classes if not counts["per_class"][s].get(c)]
        if missing:
            named = ", ".join(missing[:_MAX_NAMED]) + (f" and {len(missing) - _MAX_NAMED} more" if len(missing) > _MAX_NAMED else "")
            noun = "Class" if len(missing) == 1 else f"{len(missing)} classes"
            why = "" if from_source else f" (too few images of {'it' if len(missing) == 1 else 'them'} to share)"
            out.append(f"{noun} {named} {'has' if len(missing) == 1 else 'have'} no image in {s}{why}.")
    return out
