"""When an import started running (`import_jobs.started_at`): its images/s and ETA come from it and
the stored progress (issue #14, item 3). Jobs from before have none and report no rate.

Revision ID: 0004_import_started_at
Revises: 0003_browse
Create Date: 2026-11-30

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004_import_started_at'
down_revision: Union[str, Sequence[str], None] = '0003_browse'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('import_jobs', sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('import_jobs') as batch:
        batch.drop_column('started_at')
