"""Split allocation (appliance.services.split_allocation), issue #13 item 2: properties that must
hold for every dataset and ratio, checked with hypothesis, plus the exact cases they rest on.

The procedure (largest remainder over all strata at once, then one image of every class kept in
train by swaps that leave the totals alone) guarantees:
- every image is assigned exactly once, and the assignment depends only on (strata, ratios, seed,
  stratified), not on the order the images are listed in;
- every class with at least one image has one in train (stratified; detection: every box class);
- a subset whose ratio is 0 gets no image;
- the subset totals are within ONE image of n * ratio whenever the train share can hold one image
  of every class (issue #13: 20 images in 10 classes at 0.5/0.25/0.25 gave 10/10/0, and 8 detection
  images at 50/50 gave 7/1);
- per class, each count is the floor or the ceiling of n * ratio when every class's train quota is
  at least one image.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.services.split_allocation import (
    BACKGROUND,
    SUBSETS,
    allocate,
    assign,
    stratum_of,
    summarize,
    target_totals,
    warnings,
)

# --------------------------------------------------------------------------- strategies


@st.composite
def ratios(draw) -> dict[str, float]:
    """Ratios as the API accepts them: train > 0, val, test >= 0, summing to 1."""
    weights = [draw(st.integers(1, 20)), draw(st.integers(0, 20)), draw(st.integers(0, 20))]
    total = sum(weights)
    return {s: w / total for s, w in zip(SUBSETS, weights)}


@st.composite
def strata(draw, max_classes: int = 8, max_per_class: int = 15) -> dict[str, str]:
    """image id → class; ids are arbitrary (unsorted) strings, listed in a random order."""
    sizes = draw(st.lists(st.integers(1, max_per_class), min_size=1, max_size=max_classes))
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=len(sizes),
                          max_size=len(sizes), unique=True))
    ids = draw(st.lists(st.text("0123456789abcdef", min_size=4, max_size=8), min_size=sum(sizes),
                        max_size=sum(sizes), unique=True))
    labels = [name for name, size in zip(names, sizes) for _ in range(size)]
    return dict(zip(ids, labels))


seeds = st.integers(0, 2**31 - 1)


def per_stratum(strata_: dict[str, str], result: dict[str, str]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for image_id, label in strata_.items():
        out.setdefault(label, Counter())[result[image_id]] += 1
    return out


# --------------------------------------------------------------------------- properties


@given(strata(), ratios(), seeds, st.booleans())
def test_every_image_is_assigned_exactly_once(strata_, ratios_, seed, stratified):
    result = assign(strata_, ratios_, seed, stratified)
    assert set(result) == set(strata_)
    assert set(result.values()) <= set(SUBSETS)


@given(strata(), ratios(), seeds, st.booleans(), st.randoms(use_true_random=False))
def test_deterministic_for_a_seed_whatever_the_listing_order(strata_, ratios_, seed, stratified, rnd):
    items = list(strata_.items())
    rnd.shuffle(items)
    assert assign(dict(items), ratios_, seed, stratified) == assign(strata_, ratios_, seed, stratified)


@given(strata(), ratios(), seeds)
def test_every_class_with_images_is_in_train(strata_, ratios_, seed):
    counts = per_stratum(strata_, assign(strata_, ratios_, seed, True))
    assert set(counts) == set(strata_.values())
    for label, c in counts.items():
        assert c["train"] >= 1, (label, c)


@given(strata(), ratios(), seeds)
def test_unstratified_split_has_train_and_follows_the_ratios_overall(strata_, ratios_, seed):
    result = Counter(assign(strata_, ratios_, seed, False).values())
    n = len(strata_)
    assert result["train"] >= 1
    for s in SUBSETS:
        assert abs(result[s] - n * ratios_[s]) < 2, (s, result, n, ratios_)
        if ratios_[s] == 0:
            assert result[s] == 0


@given(strata(), ratios(), seeds)
def test_per_class_counts_round_their_quota_when_train_can_hold_every_class(strata_, ratios_, seed):
    """When every class's train quota is at least one image, no class needs a move into train: each
    count is the floor or the ceiling of n * ratio, so within one image of it."""
    sizes = Counter(strata_.values())
    if any(n * ratios_["train"] < 1 for n in sizes.values()):
        return
    for label, c in per_stratum(strata_, assign(strata_, ratios_, seed, True)).items():
        n = sizes[label]
        for s in SUBSETS:
            assert math.floor(n * ratios_[s]) <= c[s] <= math.ceil(n * ratios_[s]), (label, s, dict(c), ratios_)


@given(strata(), ratios(), seeds)
def test_a_subset_with_ratio_zero_gets_nothing(strata_, ratios_, seed):
    totals = Counter(assign(strata_, ratios_, seed, True).values())
    for s in SUBSETS:
        if ratios_[s] == 0:
            assert totals[s] == 0


@given(st.integers(0, 500), ratios())
@example(2, {"train": 1 / 6, "val": 0.5, "test": 1 / 3})  # train's one image once came from val, its exact share
def test_target_totals_sum_to_n_and_round_by_largest_remainder(n, ratios_):
    counts = target_totals(n, ratios_)
    assert sum(counts.values()) == n
    assert all(c >= 0 for c in counts.values())
    if n:
        assert counts["train"] >= 1
    for s in SUBSETS:
        assert abs(counts[s] - n * ratios_[s]) < 1, (s, counts, n, ratios_)


@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(0, 12), min_size=1, max_size=12),
       ratios(), seeds)
@example({"k0": 1, "k1": 4, "k2": 3, "k3": 1, "k4": 1, "k5": 2}, {"train": 10 / 22, "val": 7 / 22, "test": 5 / 22}, 0)
def test_allocate_rounds_every_cell_and_meets_the_totals(sizes, ratios_, seed):
    """The matrix rounding under the totals (the example needs the augmenting-path pass): every
    stratum's count is the floor or ceiling of its quota, rows add up to the stratum, columns to
    `target_totals`."""
    counts = allocate(sizes, ratios_, random.Random(seed))
    assert {s: sum(c[s] for c in counts.values()) for s in SUBSETS} == target_totals(sum(sizes.values()), ratios_)
    for k, n in sizes.items():
        assert sum(counts[k].values()) == n
        for s in SUBSETS:
            assert math.floor(n * ratios_[s]) <= counts[k][s] <= math.ceil(n * ratios_[s]), (k, s, counts[k])


@given(strata(max_per_class=6), ratios(), seeds)
@example({f"img{i:02d}": f"class{i // 2}" for i in range(20)}, {"train": 0.5, "val": 0.25, "test": 0.25}, 0)
def test_totals_within_one_image_of_the_ratios(strata_, ratios_, seed):
    """Issue #13: subset totals within one image of the ratios (when keeping every class in train
    allows it). Before the fix, 20 images in 10 classes at 0.5/0.25/0.25 gave 10/10/0."""
    n, classes = len(strata_), len(set(strata_.values()))
    if classes > n * ratios_["train"]:
        return  # every class in train already takes more than the train share
    totals = Counter(assign(strata_, ratios_, seed, True).values())
    for s in SUBSETS:
        assert abs(totals[s] - n * ratios_[s]) <= 1, (s, dict(totals), n, ratios_)


# --------------------------------------------------------------------------- detection: classes per image


@st.composite
def detection_images(draw) -> dict[str, set[str]]:
    """image id → the set of classes its boxes contain (some images have none)."""
    names = draw(st.lists(st.text("abcdefghijkl", min_size=1, max_size=4), min_size=1, max_size=12, unique=True))
    n = draw(st.integers(1, 40))
    return {f"im{i:03d}": set(draw(st.lists(st.sampled_from(names), max_size=4))) for i in range(n)}


def detection_assign(images: dict[str, set[str]], ratios_, seed) -> dict[str, str]:
    return assign({i: stratum_of(c) for i, c in images.items()}, ratios_, seed, True, images)


@given(detection_images(), ratios(), seeds)
def test_detection_every_class_with_images_is_in_train(images, ratios_, seed):
    result = detection_assign(images, ratios_, seed)
    assert set(result) == set(images)
    in_train = {c for i, sub in result.items() if sub == "train" for c in images[i]}
    assert in_train == set().union(*images.values())


@given(detection_images(), ratios(), seeds)
def test_detection_totals_within_one_image_of_the_ratios(images, ratios_, seed):
    """Whenever the train share can hold one image per class, the totals follow the ratios: each
    class's move into train is paid back by a train image it can spare."""
    n, classes = len(images), len(set().union(*images.values()))
    if classes > math.floor(n * ratios_["train"]):
        return
    totals = Counter(detection_assign(images, ratios_, seed).values())
    for s in SUBSETS:
        assert abs(totals[s] - n * ratios_[s]) <= 1, (s, dict(totals), n, ratios_)


@given(detection_images(), ratios(), seeds, st.randoms(use_true_random=False))
def test_detection_deterministic_whatever_the_listing_order(images, ratios_, seed, rnd):
    items = list(images.items())
    rnd.shuffle(items)
    assert detection_assign(dict(items), ratios_, seed) == detection_assign(images, ratios_, seed)


def test_the_two_cases_of_issue_13():
    """20 images in 10 classes at 0.5/0.25/0.25 gave 10/10/0; 8 detection images at 50/50 gave 7/1."""
    r = {"train": 0.5, "val": 0.25, "test": 0.25}
    cls = {f"img{i:02d}": f"class{i // 2}" for i in range(20)}
    for seed in range(20):
        result = assign(cls, r, seed, True)
        assert Counter(result.values()) == {"train": 10, "val": 5, "test": 5}
        assert {cls[i] for i, sub in result.items() if sub == "train"} == set(cls.values())
        in_test = sorted(cls[i] for i, sub in result.items() if sub == "test")
        in_val = sorted(cls[i] for i, sub in result.items() if sub == "val")
        assert warnings(summarize({i: {c} for i, c in cls.items()}, result), r) == [
            f"5 classes {', '.join(in_test)} have no image in val (too few images of them to share).",
            f"5 classes {', '.join(in_val)} have no image in test (too few images of them to share).",
        ]
    # 8 images, 12 classes, as in the issue's Ultralytics sample: minority classes beside majority ones
    # (four of the images hold every class between them).
    det = {
        "d0": {"person", "bus", "tie"}, "d1": {"person", "dog"}, "d2": {"person", "car", "bike", "dog"},
        "d3": {"person", "horse"}, "d4": {"elephant", "person"}, "d5": {"giraffe", "zebra", "elephant"},
        "d6": {"person", "umbrella", "tie", "bus"}, "d7": {"car", "truck", "horse"},
    }
    for seed in range(20):
        result = detection_assign(det, {"train": 0.5, "val": 0.5, "test": 0.0}, seed)
        assert Counter(result.values()) == {"train": 4, "val": 4}, seed
        assert {c for i, sub in result.items() if sub == "train" for c in det[i]} == set().union(*det.values())


# --------------------------------------------------------------------------- exact cases


def reference_assign(strata_: dict[str, str], ratios_: dict[str, float], seed: int) -> dict[str, str]:
    """The documented procedure, for ratios that divide every class exactly: one Random(seed),
    classes in name order, each class's ids sorted then shuffled, cut train | val | test."""
    rng = random.Random(seed)
    out = {}
    for label in sorted(set(strata_.values())):
        ids = sorted(i for i, lab in strata_.items() if lab == label)
        rng.shuffle(ids)
        n_train, n_val = round(len(ids) * ratios_["train"]), round(len(ids) * ratios_["val"])
        for k, image_id in enumerate(ids):
            out[image_id] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return out


@pytest.mark.parametrize("seed", [0, 7, 42, 2**31 - 1])
def test_assignment_is_the_documented_seeded_shuffle(seed):
    strata_ = {f"{c}{i:02d}": c for c in ("dog", "cat", "bird") for i in range(10)}
    r = {"train": 0.7, "val": 0.2, "test": 0.1}
    assert assign(strata_, r, seed, True) == reference_assign(strata_, r, seed)


def test_unstratified_is_one_shuffle_of_all_images():
    strata_ = {f"{c}{i:02d}": c for c in ("dog", "cat") for i in range(10)}
    r = {"train": 0.5, "val": 0.25, "test": 0.25}
    every = {image_id: "all" for image_id in strata_}
    assert assign(strata_, r, 3, False) == reference_assign(every, r, 3)


def test_different_seeds_give_different_splits():
    strata_ = {f"im{i:02d}": "a" for i in range(20)}
    r = {"train": 0.5, "val": 0.5, "test": 0.0}
    assert len({tuple(sorted(assign(strata_, r, seed, True).items())) for seed in range(5)}) == 5


@pytest.mark.parametrize("n, r, expected", [
    (0, (0.7, 0.2, 0.1), (0, 0, 0)),
    (10, (0.7, 0.2, 0.1), (7, 2, 1)),
    (1, (0.2, 0.4, 0.4), (1, 0, 0)),   # train gets the one image, even against larger remainders
    (2, (0.8, 0.1, 0.1), (2, 0, 0)),
    (3, (0.8, 0.1, 0.1), (3, 0, 0)),   # 2.4/0.3/0.3: the largest remainder is train's
    (3, (0.5, 0.5, 0.0), (2, 1, 0)),   # equal remainders: train, then val, then test
    (20, (0.5, 0.25, 0.25), (10, 5, 5)),
    (7, (0.5, 0.25, 0.25), (3, 2, 2)),  # 3.5/1.75/1.75: remainders .75 beat .5
    (6, (1.0, 0.0, 0.0), (6, 0, 0)),
])
def test_target_totals_exact(n, r, expected):
    assert target_totals(n, dict(zip(SUBSETS, r))) == dict(zip(SUBSETS, expected))


def test_stratum_of_a_detection_image_is_its_set_of_classes():
    assert stratum_of(["dog", "car", "dog"]) == "car+dog" == stratum_of({"car", "dog"})
    assert stratum_of([]) == BACKGROUND


def test_summarize_counts_images_per_subset_and_class():
    classes = {"a": {"dog"}, "b": {"dog", "cat"}, "c": {"cat"}, "d": set(), "e": {"dog"}}
    assignment = {"a": "train", "b": "val", "c": "train", "d": "test", "e": "train"}
    assert summarize(classes, assignment) == {
        "total": {"train": 3, "val": 1, "test": 1},
        "per_class": {"train": {"cat": 1, "dog": 2}, "val": {"cat": 1, "dog": 1}, "test": {BACKGROUND: 1}},
        "classes": [BACKGROUND, "cat", "dog"],
    }


@given(strata(), ratios(), seeds)
def test_summarize_matches_the_assignment(strata_, ratios_, seed):
    result = assign(strata_, ratios_, seed, True)
    summary = summarize({i: {c} for i, c in strata_.items()}, result)
    assert summary["total"] == {s: list(result.values()).count(s) for s in SUBSETS}
    assert summary["classes"] == sorted(set(strata_.values()))
    for s in SUBSETS:
        assert summary["per_class"][s] == {
            label: n for label, n in sorted(Counter(strata_[i] for i, sub in result.items() if sub == s).items())
        }


def test_warnings_name_the_empty_subset_and_the_missing_classes():
    counts = {"total": {"train": 3, "val": 0, "test": 1},
              "per_class": {"train": {"cat": 1, "dog": 2}, "val": {}, "test": {"dog": 1}}, "classes": ["cat", "dog"]}
    assert warnings(counts, {"train": 0.8, "val": 0.1, "test": 0.1}) == [
        "The val subset is empty: 10% of 4 images is less than one image. Add images or raise the val ratio.",
        "Class cat has no image in test (too few images of it to share).",
    ]
    assert warnings(counts, {"train": 0.5, "val": 0.25, "test": 0.25})[0] == (
        "The val subset is empty: every class keeps an image in train first, which leaves none of the 4 "
        "images for it. Add images or raise the val ratio.")
    # No warning for a subset the user did not ask for; a split as imported warns when val is missing.
    assert warnings(counts, {"train": 0.9, "val": 0.0, "test": 0.1}) == [
        "Class cat has no image in test (too few images of it to share)."]
    assert warnings(counts, {"train": 0.75, "val": 0.0, "test": 0.25}, from_source=True) == [
        "The imported subsets have no val images, and training needs val images; create a split with ratios instead.",
        "Class cat has no image in test.",
    ]
    many = {"total": {"train": 12, "val": 1, "test": 0}, "classes": [f"c{i:02d}" for i in range(12)],
            "per_class": {"train": {f"c{i:02d}": 1 for i in range(12)}, "val": {"c00": 1}, "test": {}}}
    assert warnings(many, {"train": 0.9, "val": 0.1, "test": 0.0}) == [
        "11 classes c01, c02, c03, c04, c05, c06, c07, c08 and 3 more have no image in val "
        "(too few images of them to share)."]
