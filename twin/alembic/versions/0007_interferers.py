"""Authorised interferers (公用干扰器) and maintenance windows: two new registry tables.

Issue 14: an exam-hall jammer is an interference incident the NOC should see as authorised,
not escalate (``interferers``); a door opened during a booked visit is not an intrusion
(``maintenance_windows``).  New tables only, so existing rows are untouched; a table that
is already there (a registry created from newer models, then stamped) is left alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
# The lead re-chains 0002-0007 at merge; on this branch the head before it is 0002.
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "maintenance_windows" not in present:
        op.create_table(
            "maintenance_windows",
            sa.Column("site_id", sa.String(64), sa.ForeignKey("sites.site_id", ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("start", sa.DateTime(timezone=True), primary_key=True),
            sa.Column("end", sa.DateTime(timezone=True), nullable=False),
            sa.Column("ticket", sa.String(100), nullable=True),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "interferers" in present:
        return
    op.create_table(
        "interferers",
        sa.Column("interferer_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("lat", sa.Float, nullable=False),
        sa.Column("lon", sa.Float, nullable=False),
        sa.Column("radius_m", sa.Float, nullable=False),
        sa.Column("bands", sa.String(300), nullable=True),
        sa.Column("windows", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
