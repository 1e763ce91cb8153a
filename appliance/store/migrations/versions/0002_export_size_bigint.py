"""Export size as a 64-bit integer on PostgreSQL: a bundle may pass 2 GiB, PostgreSQL's INTEGER is 32-bit.

SQLite's INTEGER already holds 64 bits, and rebuilding `exports` there (Alembic's batch mode) would drop
the table under its deployments' foreign keys: nothing to do on SQLite.

Revision ID: 0002_export_size_bigint
Revises: 0001_baseline
Create Date: 2026-11-30

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002_export_size_bigint'
down_revision: Union[str, Sequence[str], None] = '0001_baseline'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column('exports', 'size_bytes', existing_type=sa.INTEGER(), type_=sa.BigInteger(),
                        existing_nullable=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column('exports', 'size_bytes', existing_type=sa.BigInteger(), type_=sa.INTEGER(),
                        existing_nullable=True)
