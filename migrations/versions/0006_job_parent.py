"""jobs.parent_id: a sweep's trials are meta-train jobs that name their sweep job (deleted with it).

Revision ID: 0006
Revises: 0005
Create Date: 2020-01-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer))
        batch.create_index("ix_jobs_parent_id", ["parent_id"])
        batch.create_foreign_key("fk_jobs_parent_id", "jobs", ["parent_id"], ["id"], ondelete="CASCADE")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_parent_id", type_="foreignkey")
        batch.drop_index("ix_jobs_parent_id")
        batch.drop_column("parent_id")
