"""api_keys (bearer tokens stored as sha256, with a scope) and jobs.api_key_id, the key that
submitted a job, for the per-key limit on concurrent jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2020-01-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prefix", sa.String(16), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api_key_id", sa.Integer))
        batch.create_index("ix_jobs_api_key_id", ["api_key_id"])
        batch.create_foreign_key("fk_jobs_api_key_id", "api_keys", ["api_key_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_api_key_id", type_="foreignkey")
        batch.drop_index("ix_jobs_api_key_id")
        batch.drop_column("api_key_id")
    op.drop_table("api_keys")
