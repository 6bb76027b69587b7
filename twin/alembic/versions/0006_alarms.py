"""Alarms: flags are acknowledged and assigned (``flag_actions`` keeps who and when), and
notifications go through an outbox (``notify_state``, ``notify_outbox``).

Flags that exist when this runs are marked as already announced, so that turning
notifications on does not send the whole history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from twin.models import UTCDateTime

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("flags") as batch:
        batch.add_column(sa.Column("acknowledged_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("acknowledged_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("assignee", sa.String(100), nullable=True))
    op.create_table(
        "flag_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("value", sa.String(100), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_flag_actions_flag_id", "flag_actions", ["flag_id"])
    op.create_table(
        "notify_state",
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("notified_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("flag_id", sa.Integer, sa.ForeignKey("flags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("flag_id", "seq", "channel", name="uq_notify_outbox_event"),
    )
    op.create_index("ix_notify_outbox_flag_id", "notify_outbox", ["flag_id"])
    op.create_index("ix_notify_outbox_due", "notify_outbox", ["status", "due_at"])
    # What exists now counts as announced: enabling notifications must not replay history.
    op.execute(sa.text("INSERT INTO notify_state (flag_id, status, severity, seq, notified_at)"
                       " SELECT id, status, severity, 0, updated_at FROM flags"))


def downgrade() -> None:
    raise NotImplementedError("registries are migrated forward only")
