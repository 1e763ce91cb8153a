"""Splits: deterministic train/val/test assignment of a project's images, stratified by class.

The allocation rules themselves (strata, shuffling, rounding, the per-class guarantees) are pure
and live in `appliance.services.split_allocation`; this module reads the strata from the database
and stores the assignment.
"""

from __future__ import annotations

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
from appliance.services.split_allocation import BACKGROUND, assign, dominant_label, summarize


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
        strata[image_id] = dominant_label(counter)
    return strata


def create_split(session: Session, project_id: str, body: SplitCreate) -> dict:
    project = get_project(session, project_id)
    strata = image_strata(session, project_id, project.task)
    if not strata:
        raise ValidationFailed("The project has no images yet; import a dataset before splitting it")
    ratios = {"train": body.train, "val": body.val, "test": body.test}
    assignment = assign(strata, ratios, body.seed, body.stratified)
    summary = summarize(strata, assignment)
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
    users = session.execute(select(Experiment.name, Experiment.status).where(Experiment.split_id == split_id)).all()
    training = ", ".join(f'"{name}"' for name, status in users if status in ACTIVE)
    if training:
        raise Conflict(f'Split "{split.name}" is used by experiment {training}, which is training; stop it first')
    if users:
        quoted = ", ".join(f'"{name}"' for name, _ in users)
        raise Conflict(f'Split "{split.name}" is used by experiment{"s" if len(users) > 1 else ""} {quoted}; '
                       "delete them first (their evaluations depend on this split)")
    session.delete(split)
    session.commit()
