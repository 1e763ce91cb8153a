"""Split allocation (appliance.services.split_allocation): properties that must hold for every
dataset and ratio, checked with hypothesis, plus the exact cases they rest on.

What the current algorithm guarantees (largest remainder per stratum, then a minimum of one image
in train, and one in every wanted subset from three images up, moved from the largest subset):
- every image is assigned exactly once, and the assignment depends only on (strata, ratios, seed,
  stratified), not on the order the images are listed in;
- every class (stratum) with at least one image has at least one in train (stratified);
- a subset whose ratio is 0 gets no image;
- per stratum of n images, each subset's count is within ONE image of n * ratio whenever every
  wanted subset has n * ratio >= 1 (plain largest remainder), and within TWO images otherwise
  (the minimum moves at most one image into each of the other two subsets);
- summed over the strata the totals therefore drift by up to 2 images per stratum: issue #13 asks
  for "within one image" of the ratios for the totals, which the per-class rounding cannot give
  (`test_totals_within_one_image_of_the_ratios` is a strict xfail until then).
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.services.split_allocation import BACKGROUND, SUBSETS, _cut, assign, dominant_label, summarize

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
def test_per_class_counts_follow_the_ratios(strata_, ratios_, seed):
    for label, c in per_stratum(strata_, assign(strata_, ratios_, seed, True)).items():
        n = sum(c.values())
        wanted = [s for s in SUBSETS if ratios_[s] > 0]
        plain_rounding = all(n * ratios_[s] >= 1 for s in wanted)
        for s in SUBSETS:
            deviation = abs(c[s] - n * ratios_[s])
            assert deviation < (1 if plain_rounding else 2), (label, s, dict(c), ratios_)
            if ratios_[s] == 0:
                assert c[s] == 0
            elif n >= 3:
                assert c[s] >= 1, (label, s, dict(c), ratios_)


@given(st.integers(0, 500), ratios())
def test_cut_sums_to_n_and_rounds_by_largest_remainder(n, ratios_):
    counts = _cut(n, ratios_)
    assert sum(counts.values()) == n
    assert all(c >= 0 for c in counts.values())
    if all(n * ratios_[s] >= 1 for s in SUBSETS if ratios_[s] > 0):
        for s in SUBSETS:
            assert math.floor(n * ratios_[s]) <= counts[s] <= math.ceil(n * ratios_[s])


@pytest.mark.xfail(strict=True, reason="issue #13")
@given(strata(max_per_class=6), ratios(), seeds)
@example({f"img{i:02d}": f"class{i // 2}" for i in range(20)}, {"train": 0.5, "val": 0.25, "test": 0.25}, 0)
def test_totals_within_one_image_of_the_ratios(strata_, ratios_, seed):
    """Issue #13: subset totals within one image of the ratios (when keeping every class in train
    allows it). Today 20 images in 10 classes at 0.5/0.25/0.25 give 10/10/0."""
    n, classes = len(strata_), len(set(strata_.values()))
    if classes > n * ratios_["train"]:
        return  # every class in train already takes more than the train share
    totals = Counter(assign(strata_, ratios_, seed, True).values())
    for s in SUBSETS:
        assert abs(totals[s] - n * ratios_[s]) <= 1, (s, dict(totals), n, ratios_)


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
    (1, (0.2, 0.4, 0.4), (1, 0, 0)),   # train first, even against larger remainders
    (2, (0.8, 0.1, 0.1), (2, 0, 0)),   # below three images no minimum for val/test
    (3, (0.8, 0.1, 0.1), (1, 1, 1)),   # from three images each wanted subset gets one
    (3, (0.5, 0.5, 0.0), (2, 1, 0)),   # equal remainders: train, then val, then test
    (4, (0.9, 0.05, 0.05), (2, 1, 1)),
    (5, (0.1, 0.8, 0.1), (1, 3, 1)),   # the donor is the largest subset
    (10, (0.6, 0.35, 0.05), (5, 4, 1)),  # ... train here, though val could give one too
    (7, (0.5, 0.25, 0.25), (3, 2, 2)),  # 3.5/1.75/1.75: remainders .75 beat .5
    (6, (1.0, 0.0, 0.0), (6, 0, 0)),
])
def test_cut_exact(n, r, expected):
    assert _cut(n, dict(zip(SUBSETS, r))) == dict(zip(SUBSETS, expected))


def test_dominant_label_most_frequent_then_name():
    assert dominant_label(Counter({"car": 1, "dog": 3, "ant": 2})) == "dog"
    assert dominant_label(Counter({"zebra": 2, "bee": 2, "car": 1})) == "bee"
    assert dominant_label(Counter({"solo": 1})) == "solo"


@given(st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), st.integers(1, 5), min_size=1))
def test_dominant_label_property(labels):
    top = max(labels.values())
    assert dominant_label(Counter(labels)) == min(name for name, c in labels.items() if c == top)


def test_summarize_counts_per_subset_and_class():
    strata_ = {"a": "dog", "b": "dog", "c": "cat", "d": BACKGROUND, "e": "dog"}
    assignment = {"a": "train", "b": "val", "c": "train", "d": "test", "e": "train"}
    assert summarize(strata_, assignment) == {
        "total": {"train": 3, "val": 1, "test": 1},
        "per_class": {"train": {"cat": 1, "dog": 2}, "val": {"dog": 1}, "test": {BACKGROUND: 1}},
        "classes": [BACKGROUND, "cat", "dog"],
    }
    assert list(summarize(strata_, assignment)["per_class"]["train"]) == ["cat", "dog"]


@given(strata(), ratios(), seeds)
def test_summarize_matches_the_assignment(strata_, ratios_, seed):
    result = assign(strata_, ratios_, seed, True)
    summary = summarize(strata_, result)
    assert summary["total"] == {s: list(result.values()).count(s) for s in SUBSETS}
    assert summary["classes"] == sorted(set(strata_.values()))
    for s in SUBSETS:
        assert summary["per_class"][s] == {
            label: n for label, n in sorted(Counter(strata_[i] for i, sub in result.items() if sub == s).items())
        }
