"""Splits: deterministic train/val/test assignment of a project's images, stratified by class.

Stratum of an image: its label (classification) or its dominant box class (detection: the most
frequent label, ties broken by name; images without boxes form their own stratum). Within each
stratum, images (sorted by id) are shuffled by `random.Random(seed)` and cut by the ratios with
largest-remainder rounding; a stratum with at least one image always puts one in train, and one
with at least three images in each non-empty subset — so every class is present in train when it
has enough images.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

from pydantic import Field, model_validator
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from appliance.store.status import ACTIVE
from appliance.store.errors import Conflict, ValidationFailed
from appliance.store.ids import new_id
from appliance.store.tables import Box, Experiment, Image, Split, SplitAssignment
from appliance.schemas import StrictBody
from appliance.services.projects import get_owned, get_project

SUBSETS = ("train", "val", "test")
BACKGROUND = "(no boxes)"


class SplitCreate(StrictBody):
    name: str = Field(min_length=1, max_length=200)
    train: float = Field(ge=0, le=1)
    val: float = Field(ge=0, le=1)
    test: float = Field(ge=0, le=1)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    stratified: bool = True

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        if self.train <= 0:
            raise ValueError("train must be > 0")
        return self


def get_split(session: Session, project_id: str, split_id: str) -> Split:
    return get_owned(session, Split, "split", project_id, split_id)


def split_public(split: Split) -> dict:
    return {
        "id": split.id, "project_id": split.project_id, "name": split.name,
        "ratios": {"train": split.train, "val": split.val, "test": split.test},
        "seed": split.seed, "stratified": split.stratified, "counts": split.counts, "created_at": split.created_at,
    }


def list_splits(session: Session, project_id: str) -> list[dict]:
    get_project(session, project_id)
    rows = session.scalars(select(Split).where(Split.project_id == project_id).order_by(Split.created_at))
    return [split_public(s) for s in rows]


def image_strata(session: Session, project_id: str, task: str) -> dict[str, str]:
    """image id → its class for stratification."""
    if task == "classification":
        rows = session.execute(select(Image.id, Image.label).where(Image.project_id == project_id)).all()
        return {image_id: label or BACKGROUND for image_id, label in rows}
    strata = {image_id: BACKGROUND for image_id in session.scalars(select(Image.id).where(Image.project_id == project_id))}
    labels: dict[str, Counter] = defaultdict(Counter)
    for image_id, label in session.execute(
        select(Box.image_id, Box.label).join(Image, Image.id == Box.image_id).where(Image.project_id == project_id)
    ):
        labels[image_id][label] += 1
    for image_id, counter in labels.items():
        strata[image_id] = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return strata


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


def create_split(session: Session, project_id: str, body: SplitCreate) -> dict:
    project = get_project(session, project_id)
    strata = image_strata(session, project_id, project.task)
    if not strata:
        raise ValidationFailed("The project has no images yet; import a dataset before splitting it")
    ratios = {"train": body.train, "val": body.val, "test": body.test}
    assignment = assign(strata, ratios, body.seed, body.stratified)
    counts: dict[str, dict[str, int]] = {s: {} for s in SUBSETS}
    for image_id, subset in assignment.items():
        counts[subset][strata[image_id]] = counts[subset].get(strata[image_id], 0) + 1
    summary = {
        "total": {s: sum(c.values()) for s, c in counts.items()},
        "per_class": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "classes": sorted(set(strata.values())),
    }
    split = Split(id=new_id("split"), project_id=project_id, name=body.name, seed=body.seed,
                  stratified=body.stratified, counts=summary, **ratios)
    session.add(split)
    session.flush()
    session.execute(insert(SplitAssignment), [
        {"split_id": split.id, "image_id": image_id, "subset": subset} for image_id, subset in assignment.items()
    ])
    session.commit()
    return split_public(split)


def delete_split(session: Session, project_id: str, split_id: str) -> None:
    split = get_split(session, project_id, split_id)
    users = session.execute(select(Experiment.id, Experiment.status).where(Experiment.split_id == split_id)).all()
    training = [eid for eid, status in users if status in ACTIVE]
    if training:
        raise Conflict(f"Split {split_id} is used by experiment {', '.join(training)}, which is training; stop it first")
    if users:
        raise Conflict(
            f"Split {split_id} is used by experiments {', '.join(e for e, _ in users)}; delete them first "
            "(their evaluations depend on this split)"
        )
    session.delete(split)
    session.commit()
