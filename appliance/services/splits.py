"""Splits: deterministic train/val/test assignment of a project's images, stratified by class, or
the subsets the dataset was imported with ("as imported", `from_source`).

The allocation rules themselves (strata, shuffling, rounding, the per-class guarantees, the
warnings) are pure and live in `appliance.services.split_allocation`; this module reads the strata
from the database and stores the assignment.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from appliance.store.status import ACTIVE
from appliance.store.errors import Conflict, ValidationFailed
from appliance.store.ids import new_id
from appliance.store.tables import Box, Experiment, Image, Split, SplitAssignment
from appliance.schemas import StoredText, StrictBody
from appliance.services.projects import get_owned, get_project
from appliance.services.split_allocation import BACKGROUND, SUBSETS, assign, stratum_of, summarize, warnings

RATIO_FIELDS = ("train", "val", "test", "seed", "stratified")


class SplitCreate(StrictBody):
    name: StoredText = Field(min_length=1, max_length=200)
    train: float | None = Field(default=None, ge=0, le=1)
    val: float | None = Field(default=None, ge=0, le=1)
    test: float | None = Field(default=None, ge=0, le=1)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    stratified: bool = True
    from_source: bool = Field(default=False, description="Keep the subsets the dataset was imported with "
                              "(train/ val/ test/ folders, per-split files); no ratios then")

    @model_validator(mode="after")
    def _sum_to_one(self):
        if self.from_source:
            given = [f for f in RATIO_FIELDS if f in self.model_fields_set]
            if given:
                raise ValueError(f"from_source: cannot be combined with {', '.join(given)} "
                                 "(a split as imported keeps the imported subsets; leave the ratios out)")
            return self
        missing = [f for f in SUBSETS if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: required (the ratios), unless from_source is true")
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        if self.train <= 0:
            raise ValueError("train must be > 0")
        return self


def get_split(session: Session, project_id: str, split_id: str) -> Split:
    return get_owned(session, Split, "split", project_id, split_id)


def split_public(split: Split) -> dict:
    ratios = {"train": split.train, "val": split.val, "test": split.test}
    return {
        "id": split.id, "project_id": split.project_id, "name": split.name, "ratios": ratios,
        "seed": split.seed, "stratified": split.stratified, "from_source": bool(split.from_source),
        "counts": split.counts, "warnings": warnings(split.counts, ratios, bool(split.from_source)),
        "created_at": split.created_at,
    }


def list_splits(session: Session, project_id: str) -> list[dict]:
    get_project(session, project_id)
    rows = session.scalars(select(Split).where(Split.project_id == project_id).order_by(Split.created_at))
    return [split_public(s) for s in rows]


def image_classes(session: Session, project_id: str, task: str) -> dict[str, set[str]]:
    """image id → its classes: its label (classification), the classes of its boxes (detection)."""
    if task == "classification":
        rows = session.execute(select(Image.id, Image.label).where(Image.project_id == project_id)).all()
        return {image_id: {label or BACKGROUND} for image_id, label in rows}
    classes: dict[str, set[str]] = {i: set() for i in session.scalars(select(Image.id).where(Image.project_id == project_id))}
    for image_id, label in session.execute(
        select(Box.image_id, Box.label).join(Image, Image.id == Box.image_id).where(Image.project_id == project_id)
    ):
        classes[image_id].add(label)
    return classes


def source_subsets(session: Session, project_id: str) -> dict[str, int]:
    """Images per subset the import recorded (`Image.subset_hint`); images without one under "none"."""
    rows = session.execute(select(Image.subset_hint, func.count()).where(Image.project_id == project_id)
                           .group_by(Image.subset_hint)).all()
    return {hint or "none": n for hint, n in rows}


def create_split(session: Session, project_id: str, body: SplitCreate) -> dict:
    project = get_project(session, project_id)
    classes = image_classes(session, project_id, project.task)
    if not classes:
        raise ValidationFailed("The project has no images yet; import a dataset before splitting it")
    if body.from_source:
        hints = dict(session.execute(select(Image.id, Image.subset_hint).where(Image.project_id == project_id)).all())
        if not any(hints.values()):
            raise ValidationFailed(
                "from_source: this project's images carry no imported subsets (the dataset had no train/ val/ "
                "test/ folders or per-split files); create a split with train, val and test ratios instead")
        assignment = {image_id: hints[image_id] or "train" for image_id in classes}
        n = len(assignment)
        ratios = {s: sum(1 for v in assignment.values() if v == s) / n for s in SUBSETS}
        seed, stratified = 0, False
    else:
        ratios = {"train": body.train, "val": body.val, "test": body.test}
        seed, stratified = body.seed, body.stratified
        strata = {i: (next(iter(c)) if project.task == "classification" else stratum_of(c)) for i, c in classes.items()}
        assignment = assign(strata, ratios, seed, stratified, classes)
    summary = summarize(classes, assignment)
    split = Split(id=new_id("split"), project_id=project_id, name=body.name, seed=seed, stratified=stratified,
                  from_source=body.from_source, counts=summary, **ratios)
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
