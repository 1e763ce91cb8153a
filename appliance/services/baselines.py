"""The majority-class baseline beside an accuracy (issue #13, item 3).

A classifier that answers one class for every image scores the share of that class: on a set
that is 48.8 % ants, 0.488 accuracy is no result at all. So every classification accuracy the
appliance shows comes with the accuracy of always answering the most frequent class of the same
images, and a flag when the model does not beat it:

- an experiment: its val subset (the images its per-epoch val accuracy is measured on), against
  its best val accuracy;
- an evaluation: the evaluated subset (the truth rows of its confusion matrix), against its accuracy.

"Beats" means at least one image more right than the baseline: accuracy × n ≥ majority count + ½.
(The training metric is a float32 average, so 0.4875 may be stored as 0.48750001; counting images
keeps that from passing as a win.) Ties between classes go to the first in the class list.

Detection has no such baseline: mAP has no constant answer to compare with (a constant box scores
about zero), so the fields are null there (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.tables import Experiment, Image, SplitAssignment


def majority(counts: Mapping[str, int], order: Sequence[str]) -> dict | None:
    """`{class_name, count, total, share}` of the most frequent class; None without images."""
    total = sum(counts.get(name, 0) for name in order)
    if not total:
        return None
    name = max(order, key=lambda c: (counts.get(c, 0), -order.index(c)))
    return {"class_name": name, "count": counts[name], "total": total, "share": counts[name] / total}


def beats(accuracy: float | None, baseline: dict | None) -> bool | None:
    """Whether `accuracy` (on the baseline's images) gets at least one image more right; None when
    there is nothing to compare."""
    if accuracy is None or baseline is None:
        return None
    return accuracy * baseline["total"] >= baseline["count"] + 0.5


def warning(baseline: dict | None, beaten: bool | None) -> str | None:
    if beaten is not False:
        return None
    return f"No better than always answering '{baseline['class_name']}' ({baseline['share']:.1%})"


def fields(accuracy: float | None, baseline: dict | None) -> dict:
    """The three public fields: `majority_baseline`, `beats_baseline`, `baseline_warning`."""
    beaten = beats(accuracy, baseline)
    return {"majority_baseline": baseline, "beats_baseline": beaten, "baseline_warning": warning(baseline, beaten)}


def for_experiment(session: Session, exp: Experiment) -> dict:
    """Against the experiment's val subset and its best val accuracy (classification only)."""
    if exp.params.get("task") != "classification" or not exp.class_names:
        return fields(None, None)
    rows = session.execute(
        select(Image.label, func.count()).join(SplitAssignment, SplitAssignment.image_id == Image.id)
        .where(SplitAssignment.split_id == exp.split_id, SplitAssignment.subset == "val",
               Image.label.in_(exp.class_names))
        .group_by(Image.label)
    ).all()
    return fields(exp.best_metric, majority(dict(rows), list(exp.class_names)))


def for_evaluation(metrics: dict | None) -> dict:
    """Against the evaluated subset (its confusion matrix's truth rows) and the accuracy."""
    if not metrics or metrics.get("task") != "classification":
        return fields(None, None)
    cm = metrics["confusion_matrix"]
    counts = {name: sum(row) for name, row in zip(cm["labels"], cm["matrix"])}
    return fields(metrics.get("accuracy"), majority(counts, list(cm["labels"])))
