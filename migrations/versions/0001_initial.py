"""Initial schema: jobs (with lease columns), events, checkpoints, files, the loss registry.

Revision ID: 0001
Revises:
Create Date: 2020-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "losses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("register_as", sa.String(64)),
        sa.Column("loss_version_id", sa.Integer),  # FK added below, once loss_versions exists
        sa.Column("idempotency_key", sa.String(255), unique=True),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("progress_completed", sa.Integer, nullable=False),
        sa.Column("progress_total", sa.Integer, nullable=False),
        sa.Column("progress_unit", sa.String(32), nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("error", sa.JSON),
        sa.Column("result", sa.JSON),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "loss_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("loss_id", sa.Integer, sa.ForeignKey("losses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="SET NULL"), unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("weights", sa.LargeBinary, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("loss_id", "version"),
    )
    op.create_index("ix_loss_versions_loss_id", "loss_versions", ["loss_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.create_foreign_key("fk_jobs_loss_version_id", "loss_versions", ["loss_version_id"], ["id"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])
    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("iteration", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "job_files",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "loss_aliases",
        sa.Column("loss_id", sa.Integer, sa.ForeignKey("losses.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("loss_versions.id", ondelete="CASCADE"),
                  nullable=False),
    )
    op.create_table(
        "loss_tags",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("loss_versions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    for table in ("loss_tags", "loss_aliases", "job_files", "checkpoints", "job_events"):
        op.drop_table(table)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_loss_version_id", type_="foreignkey")
    for table in ("loss_versions", "jobs", "losses"):
        op.drop_table(table)
