"""The class list of an experiment, from the labels themselves (issue #13, item 1).

A detection image may hold boxes of several classes; every class named by a box is a class of
the dataset, whether or not it is the most frequent one in any image. The class list of an
experiment (its head size, the evaluation's ground truth, metrics and confusion matrix, the
gallery filters and the export's label list, which all read `Experiment.class_names`) is
therefore every label of the boxes (detection) or of the images (classification) of the
split's images — never one "dominant" class per image (that is only a split stratum).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.store.tables import Box, Image, SplitAssignment


def split_class_names(session: Session, split_id: str, task: str) -> list[str]:
    """Sorted distinct labels of the split's images: box labels for detection, image labels for
    classification (unlabelled images name no class)."""
    if task == "classification":
        query = (select(Image.label).join(SplitAssignment, SplitAssignment.image_id == Image.id)
                 .where(SplitAssignment.split_id == split_id, Image.label.is_not(None)))
    else:
        query = (select(Box.label).join(SplitAssignment, SplitAssignment.image_id == Box.image_id)
                 .where(SplitAssignment.split_id == split_id))
    return sorted(set(session.scalars(query.distinct())))
