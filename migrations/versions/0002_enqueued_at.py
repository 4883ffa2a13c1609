"""jobs.enqueued_at: when the Celery runner last sent a job's message, so a sweep can send the jobs
that have none (broker down at submit time, a stopped or dead worker).

Revision ID: 0002
Revises: 0001
Create Date: 2020-01-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued_at")
