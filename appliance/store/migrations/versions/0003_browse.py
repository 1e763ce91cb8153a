"""Browsing at size (issue #14 item 2): indexes for every image-list filter, and the evaluation
sample filters in SQL (confusion cells and detection classes in side tables, filled from the stored
samples' payloads).

Revision ID: 0003_browse
Revises: 0002_export_size_bigint
Create Date: 2026-11-30

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003_browse'
down_revision: Union[str, Sequence[str], None] = '0002_export_size_bigint'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEXES = [
    ("ix_images_browse", "images", ["project_id", "created_at", "id"]),
    ("ix_images_browse_label", "images", ["project_id", "label", "created_at", "id"]),
    ("ix_images_project_width", "images", ["project_id", "width"]),
    ("ix_images_project_height", "images", ["project_id", "height"]),
    ("ix_boxes_label_image", "boxes", ["label", "image_id"]),
    ("ix_split_assignments_browse", "split_assignments", ["split_id", "subset", "image_id"]),
    ("ix_eval_samples_by_rank", "eval_samples", ["evaluation_id", "rank"]),
    ("ix_eval_samples_errors", "eval_samples", ["evaluation_id", "is_error", "rank"]),
]
_BATCH = 1000


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)
    cells = op.create_table(
        'eval_sample_cells',
        sa.Column('evaluation_id', sa.String(length=32), nullable=False),
        sa.Column('truth', sa.Integer(), nullable=False),
        sa.Column('pred', sa.Integer(), nullable=False),
        sa.Column('image_id', sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('evaluation_id', 'truth', 'pred', 'image_id'),
    )
    classes = op.create_table(
        'eval_sample_classes',
        sa.Column('evaluation_id', sa.String(length=32), nullable=False),
        sa.Column('class_index', sa.Integer(), nullable=False),
        sa.Column('image_id', sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('evaluation_id', 'class_index', 'image_id'),
    )
    # The samples stored before: their cells and classes from the payload (the same rule as
    # appliance.store.evaluations.sample_keys, copied here so the revision never changes).
    bind = op.get_bind()
    samples = sa.table('eval_samples', sa.column('evaluation_id', sa.String), sa.column('image_id', sa.String),
                       sa.column('payload', sa.JSON))
    cell_rows, class_rows = [], []
    for evaluation_id, image_id, payload in bind.execute(
            sa.select(samples.c.evaluation_id, samples.c.image_id, samples.c.payload)):
        found_cells, found_classes = _keys(payload or {})
        cell_rows += [{"evaluation_id": evaluation_id, "image_id": image_id, "truth": t, "pred": p}
                      for t, p in found_cells]
        class_rows += [{"evaluation_id": evaluation_id, "image_id": image_id, "class_index": c}
                       for c in found_classes]
        if len(cell_rows) >= _BATCH or len(class_rows) >= _BATCH:
            _flush(bind, cells, cell_rows, classes, class_rows)
            cell_rows, class_rows = [], []
    _flush(bind, cells, cell_rows, classes, class_rows)


def _keys(payload: dict) -> tuple[set, set]:
    if "cell" in payload:
        found_cells = {tuple(payload["cell"])} if payload["cell"] is not None else set()
    else:
        found_cells = {tuple(c) for c in payload.get("cells") or []}
    found_classes = set()
    if isinstance(payload.get("gt"), dict) or isinstance(payload.get("pred"), dict):  # detection
        found_classes = set(_boxes(payload, "gt") or []) | set(
            _boxes(payload, "pred") or [])
    return {(int(t), int(p)) for t, p in found_cells}, {int(c) for c in found_classes}


def _boxes(payload: dict, key: str) -> list:
    value = payload.get(key)
    return value.get("labels") or [] if isinstance(value, dict) else []


def _flush(bind, cells, cell_rows, classes, class_rows) -> None:
    if cell_rows:
        bind.execute(cells.insert(), cell_rows)
    if class_rows:
        bind.execute(classes.insert(), class_rows)


def downgrade() -> None:
    op.drop_table('eval_sample_classes')
    op.drop_table('eval_sample_cells')
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
