"""Covering indexes for the dataset summary (issue #14: the dataset page at 100k images): its
aggregates (sizes, aspect ratios, classes, hashes, box counts, degenerate boxes) read these indexes
instead of the wide image and box rows.

Revision ID: 0005_summary_indexes
Revises: 0004_import_started_at
Create Date: 2026-12-01

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0005_summary_indexes'
down_revision: Union[str, Sequence[str], None] = '0004_import_started_at'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_images_summary', 'images',
                    ['project_id', 'width', 'height', 'phash', 'label', 'created_at', 'id'])
    op.create_index('ix_boxes_summary', 'boxes', ['image_id', 'label', 'x1', 'y1', 'x2', 'y2'])


def downgrade() -> None:
    op.drop_index('ix_boxes_summary', table_name='boxes')
    op.drop_index('ix_images_summary', table_name='images')
