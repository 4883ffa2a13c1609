"""loss_versions.family (the task family, for ``GET /v1/losses?family=``; filled from each stored
loss.json) and loss_versions.description (markdown, set by ``PATCH /v1/losses/{id}``).

Revision ID: 0005
Revises: 0004
Create Date: 2020-01-05
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _family(spec) -> str | None:
    """The stored loss.json's task family; None for a row whose spec does not parse."""
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except ValueError:
            return None
    family = spec.get("task_family") if isinstance(spec, dict) else None
    return family if isinstance(family, str) and len(family) <= 64 else None


def upgrade() -> None:
    with op.batch_alter_table("loss_versions") as batch:
        batch.add_column(sa.Column("family", sa.String(64)))
        batch.add_column(sa.Column("description", sa.Text))
        batch.create_index("ix_loss_versions_family", ["family"])
    versions = sa.table("loss_versions", sa.column("id", sa.Integer), sa.column("spec", sa.Text),
                        sa.column("family", sa.String))
    conn = op.get_bind()
    for version_id, spec in conn.execute(sa.select(versions.c.id, versions.c.spec)).all():
        family = _family(spec)
        if family is not None:
            conn.execute(versions.update().where(versions.c.id == version_id).values(family=family))


def downgrade() -> None:
    with op.batch_alter_table("loss_versions") as batch:
        batch.drop_index("ix_loss_versions_family")
        batch.drop_column("description")
        batch.drop_column("family")
